"""Evaluation plots written as PNG: precision-recall curves and a detection confusion matrix."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import box_iou

from detforge.metrics.coco import COCOEvalResult

__all__ = ["confusion_matrix", "plot_confusion_matrix", "plot_pr_curves"]


def _figure(width: float, height: float):
    """A standalone matplotlib Figure (no pyplot state, no display needed) and its axes."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    return fig, fig.subplots()


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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    return path


def confusion_matrix(
    predictions: Sequence[Mapping[str, Tensor]],
    targets: Sequence[Mapping[str, Tensor]],
    num_classes: int,
    iou_threshold: float = 0.5,
    score_threshold: float = 0.25,
) -> np.ndarray:
    """Detection confusion matrix (int64 [C + 1, C + 1]): rows are true classes, columns predicted classes,
    index ``C`` is background (a missed object: row c, column C; a false detection: row C, column c).

    Per image, predictions with score >= ``score_threshold`` are paired with ground truth of any class by
    IoU >= ``iou_threshold``, highest IoU first, each box used once. Crowd and ignored objects are skipped.

    Args:
        predictions: per image ``boxes`` (Tensor[K, 4] xyxy), ``scores`` (Tensor[K]), ``labels`` (Tensor[K]).
        targets: per image ``boxes`` (Tensor[N, 4] xyxy), ``labels`` (Tensor[N]), optional ``iscrowd``,
            ``ignore`` (Tensor[N]).
        num_classes: C; labels must lie in [0, C).
    """
    if len(predictions) != len(targets):
        raise ValueError(f"got {len(predictions)} predictions for {len(targets)} targets")
    bg = num_classes
    matrix = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)
    for i, (p, t) in enumerate(zip(predictions, targets)):  # per image: pairs never cross images
        keep_p = torch.as_tensor(p["scores"]).reshape(-1) >= score_threshold
        p_boxes = torch.as_tensor(p["boxes"]).reshape(-1, 4)[keep_p].double()  # [K, 4]
        p_labels = torch.as_tensor(p["labels"]).reshape(-1)[keep_p].long().numpy()
        g_labels = torch.as_tensor(t["labels"]).reshape(-1).long()
        skip = torch.zeros(len(g_labels), dtype=torch.bool)
        for key in ("iscrowd", "ignore"):
            if key in t:
                skip |= torch.as_tensor(t[key]).reshape(-1).bool()
        g_boxes = torch.as_tensor(t["boxes"]).reshape(-1, 4)[~skip].double()  # [N, 4]
        g_labels = g_labels[~skip].numpy()
        for where, labels in (("prediction", p_labels), ("target", g_labels)):
            if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
                raise ValueError(f"{where} {i}: label outside [0, {num_classes}): {labels.tolist()}")
        pi = np.zeros(0, np.int64)
        gi = np.zeros(0, np.int64)
        if len(p_boxes) and len(g_boxes):
            iou = box_iou(g_boxes, p_boxes).numpy()  # [N, K]
            gi, pi = np.nonzero(iou >= iou_threshold)
            order = np.argsort(-iou[gi, pi], kind="stable")
            gi, pi = gi[order], pi[order]
            _, first = np.unique(pi, return_index=True)  # each prediction once, at its best IoU
            first = np.sort(first)
            gi, pi = gi[first], pi[first]
            _, first = np.unique(gi, return_index=True)  # each object once
            first = np.sort(first)
            gi, pi = gi[first], pi[first]
        np.add.at(matrix, (g_labels[gi], p_labels[pi]), 1)
        missed = np.setdiff1d(np.arange(len(g_labels)), gi)
        false = np.setdiff1d(np.arange(len(p_labels)), pi)
        np.add.at(matrix, (g_labels[missed], bg), 1)
        np.add.at(matrix, (bg, p_labels[false]), 1)
    return matrix


def plot_confusion_matrix(
    matrix: np.ndarray,
    path: str | Path,
    class_names: Mapping[int, str] | Sequence[str] | None = None,
    normalize: bool = True,
) -> Path:
    """Draw ``confusion_matrix``'s output (rows true, columns predicted, last is background) as a PNG.
    ``normalize`` divides each row by its total (the share of each true class). Returns the path."""
    matrix = np.asarray(matrix)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] < 2:
        raise ValueError(f"matrix must be square [C + 1, C + 1], got shape {matrix.shape}")
    n = matrix.shape[0] - 1
    labels = [*_names(class_names, list(range(n))), "background"]
    values = matrix.astype(np.float64)
    if normalize:
        values = values / np.maximum(values.sum(axis=1, keepdims=True), 1)
    size = min(4 + 0.35 * n, 24)
    fig, ax = _figure(size, size * 0.85)
    im = ax.imshow(values, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ticks = np.arange(n + 1)
    show_labels = n <= 40
    ax.set_xticks(ticks, labels if show_labels else [], rotation=90, fontsize=7)
    ax.set_yticks(ticks, labels if show_labels else [], fontsize=7)
    if n <= 15:
        for r in range(n + 1):
            for c in range(n + 1):
                if matrix[r, c]:
                    text = f"{values[r, c]:.2f}" if normalize else str(int(matrix[r, c]))
                    ax.text(
                        c,
                        r,
                        text,
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if values[r, c] > 0.5 * values.max() else "black",
                    )
    ax.set(xlabel="Predicted", ylabel="True")
    ax.set_title("Confusion matrix" + (" (row-normalised)" if normalize else ""))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    return path
