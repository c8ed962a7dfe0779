"""Evaluation plots written as PNG: precision-recall curves, F1-confidence curves and a detection confusion
matrix (counts beside row-normalised shares)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from detforge.metrics.coco import COCOEvalResult
from detforge.metrics.confusion import confusion_matrix  # re-exported: its home was this module
from detforge.metrics.f1 import DetectionSummary, F1Curve

__all__ = [
    "ConfusionPanels",
    "confusion_matrix",
    "plot_confusion_matrix",
    "plot_detection_summary",
    "plot_f1_curves",
    "plot_pr_curves",
]

ConfusionPanels = Literal["both", "counts", "normalized"]
_PANELS = ("both", "counts", "normalized")


def _figure(width: float, height: float, ncols: int = 1):
    """A standalone matplotlib Figure (no pyplot state, no display needed) and its axes (``ncols`` of them:
    an array)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    return fig, fig.subplots(1, ncols) if ncols > 1 else fig.subplots()


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def _names(class_names: Mapping[int, str] | Sequence[str] | None, ids: Sequence[int]) -> list[str]:
    if class_names is None:
        return [str(i) for i in ids]
    if isinstance(class_names, Mapping):
        return [str(class_names.get(i, i)) for i in ids]
    return [str(class_names[i]) if 0 <= i < len(class_names) else str(i) for i in ids]


def plot_pr_curves(
    result: COCOEvalResult,
    path: str | Path,
    iou_threshold: float = 0.5,
    class_names: Mapping[int, str] | Sequence[str] | None = None,
    area: str = "all",
) -> Path:
    """Precision-recall curve of every class with ground truth (thin lines) and their mean (bold) at one IoU
    threshold, from ``COCOEvalResult.precision`` (101 recall points, most detections). Returns the path."""
    matches = np.flatnonzero(np.isclose(result.iou_thresholds, iou_threshold))
    if len(matches) == 0:
        raise ValueError(f"iou_threshold {iou_threshold} not among {result.iou_thresholds.tolist()}")
    if area not in result.area_labels:
        raise ValueError(f"area must be one of {result.area_labels}, got {area!r}")
    t, a = int(matches[0]), result.area_labels.index(area)
    curves = result.precision[t, :, :, a, -1]  # [R, K]
    valid = (curves > -1).all(axis=0)  # [K] classes with ground truth
    names = class_names if class_names is not None else result.category_names
    labels = _names(names, result.category_ids.tolist())
    recall = result.recall_thresholds
    fig, ax = _figure(7, 6)
    few = valid.sum() <= 20
    for k in np.flatnonzero(valid):
        ap = curves[:, k].mean()
        ax.plot(
            recall,
            curves[:, k],
            lw=1,
            alpha=0.8 if few else 0.3,
            color=None if few else "grey",
            label=f"{labels[k]} {ap:.3f}" if few else None,
        )
    if valid.any():
        mean = curves[:, valid].mean(axis=1)  # [R]
        ax.plot(
            recall, mean, lw=3, color="blue", label=f"all classes {mean.mean():.3f} mAP@{iou_threshold:g}"
        )
    ax.set(xlabel="Recall", ylabel="Precision", xlim=(0, 1), ylim=(0, 1.01))
    ax.set_title(f"Precision-recall, IoU {iou_threshold:g}, area {area}")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=7, ncol=2 if few and valid.sum() > 10 else 1)
    return _save(fig, path)


def _matrix_panel(fig, ax, matrix: np.ndarray, labels: list[str], normalize: bool) -> None:
    """One panel of :func:`plot_confusion_matrix`: counts, or each row divided by its total."""
    n = matrix.shape[0] - 1
    values = matrix.astype(np.float64)  # [C + 1, C + 1]
    if normalize:
        values = values / np.maximum(values.sum(axis=1, keepdims=True), 1)
    im = ax.imshow(values, cmap="Blues", vmin=0, vmax=1 if normalize else max(float(values.max()), 1.0))
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ticks = np.arange(n + 1)
    show_labels = n <= 40
    ax.set_xticks(ticks, labels if show_labels else [], rotation=90, fontsize=7)
    ax.set_yticks(ticks, labels if show_labels else [], fontsize=7)
    if n <= 15:
        for r, c in zip(*np.nonzero(matrix), strict=True):
            text = f"{values[r, c]:.2f}" if normalize else str(int(matrix[r, c]))
            color = "white" if values[r, c] > 0.5 * values.max() else "black"
            ax.text(c, r, text, ha="center", va="center", fontsize=7, color=color)
    ax.set(xlabel="Predicted", ylabel="True")
    ax.set_title("row-normalised" if normalize else "counts")


def plot_confusion_matrix(
    matrix: np.ndarray,
    path: str | Path,
    class_names: Mapping[int, str] | Sequence[str] | None = None,
    panels: ConfusionPanels = "both",
    subtitle: str | None = None,
) -> Path:
    """Draw ``confusion_matrix``'s output (rows true, columns predicted, last is background) as a PNG.

    Args:
        panels: ``"both"``: the counts beside the row-normalised shares (each row divided by its total: the
            share of each true class); ``"counts"`` or ``"normalized"``: one of them.
        subtitle: added to the title, e.g. ``"IoU 0.5, conf 0.31"``.

    Returns the path.
    """
    if panels not in _PANELS:
        raise ValueError(f"panels must be one of {_PANELS}, got {panels!r}")
    matrix = np.asarray(matrix)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] < 2:
        raise ValueError(f"matrix must be square [C + 1, C + 1], got shape {matrix.shape}")
    n = matrix.shape[0] - 1
    labels = [*_names(class_names, list(range(n))), "background"]
    modes = [False, True] if panels == "both" else [panels == "normalized"]
    size = min(4 + 0.35 * n, 24)
    fig, axes = _figure(size * len(modes), size * 0.85, ncols=len(modes))
    for ax, normalize in zip(np.atleast_1d(axes), modes, strict=True):
        _matrix_panel(fig, ax, matrix, labels, normalize)
    fig.suptitle("Confusion matrix" + (f", {subtitle}" if subtitle else ""))
    return _save(fig, path)


def plot_f1_curves(
    curve: F1Curve, path: str | Path, class_names: Mapping[int, str] | Sequence[str] | None = None
) -> Path:
    """F1 against the confidence threshold: each class with objects or detections (thin), all classes pooled
    (bold), and the F1-best confidence marked, with its F1 in the legend. Returns the path."""
    shown = np.flatnonzero((curve.num_objects > 0) | (curve.num_detections > 0))  # [K] class labels
    labels = _names(class_names, shown.tolist())
    few = len(shown) <= 20
    fig, ax = _figure(7, 6)
    x = curve.confidences  # [T]
    for k, name in zip(shown, labels, strict=True):
        ax.plot(
            x,
            curve.f1[k],
            lw=1,
            alpha=0.8 if few else 0.3,
            color=None if few else "grey",
            label=f"{name} {curve.f1[k].max():.2f}" if few else None,
        )
    ax.plot(x, curve.overall_f1, lw=3, color="blue", label="all classes")
    if curve.best_conf is not None:
        ax.axvline(curve.best_conf, color="red", lw=1, ls="--", alpha=0.6)
        ax.plot(
            [curve.best_conf],
            [curve.best_f1],
            "o",
            color="red",
            ms=8,
            label=f"best: F1 {curve.best_f1:.3f} at conf {curve.best_conf:.3f}",
        )
    ax.set(xlabel="Confidence", ylabel="F1", xlim=(0, 1), ylim=(0, 1.01))
    ax.set_title(f"F1-confidence, IoU {curve.iou_threshold:g}")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=7, ncol=2 if few and len(shown) > 10 else 1)
    return _save(fig, path)


def plot_detection_summary(
    summary: DetectionSummary,
    folder: str | Path,
    class_names: Mapping[int, str] | Sequence[str] | None = None,
    write: Callable[[Path, Callable[[str], object]], Path] | None = None,
) -> list[Path]:
    """``confusion_matrix.png`` (counts and row-normalised, at the F1-best confidence) and ``f1_curve.png``
    of ``summary`` in ``folder``. ``write(path, draw)``: how a file is written (``draw(file)`` draws it), e.g.
    :func:`detforge.engine.callbacks.atomic_write`; None: straight to ``path``. Returns the two paths."""
    folder = Path(folder)

    def direct(path: Path, draw: Callable[[str], object]) -> Path:
        draw(str(path))
        return path

    write = write or direct
    subtitle = f"IoU {summary.f1.iou_threshold:g}, conf {summary.confusion_conf:.3f}"
    matrix = summary.confusion_matrix
    return [
        write(
            folder / "confusion_matrix.png",
            lambda tmp: plot_confusion_matrix(matrix, tmp, class_names, subtitle=subtitle),
        ),
        write(folder / "f1_curve.png", lambda tmp: plot_f1_curves(summary.f1, tmp, class_names)),
    ]
