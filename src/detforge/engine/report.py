"""``report.html``: one page with everything a run (or ``detforge val --out``) found about its model.

The page holds the COCO table, a per-class table (AP, AR, F1 at the deployed confidence, objects, missed, false
detections), every picture the run folder has (:data:`PICTURES`) and a gallery of the validation images with
the most missed objects and the most false detections at the F1-best confidence, ground truth (left) beside the
predictions (right). It loads nothing from the network: the pictures are files beside it (the gallery's in
``report/``), named by relative paths, so the folder can be copied or zipped as it is.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["PICTURES", "GalleryImage", "gallery_images", "write_report"]

PICTURES = (
    ("curves.png", "Losses and mAP per epoch"),
    ("pr_curves.png", "Precision-recall per class at IoU 0.5"),
    ("f1_curve.png", "F1 against confidence, per class and overall"),
    ("confusion_matrix.png", "Confusion matrix at IoU 0.5 and the F1-best confidence"),
    ("labels.png", "The training labels"),
    ("train_batches.jpg", "The first training batches as the model received them"),
    ("val_predictions.png", "Validation images: ground truth (left), predictions (right)"),
)
"""The run-folder pictures the page shows when they exist, in this order, with their captions."""

GALLERY_DIR = "report"
MIN_SIDE = 320
"""Gallery images with a shorter longer side are drawn at the integer multiple of their size that reaches it."""


@dataclass(frozen=True)
class GalleryImage:
    """One gallery picture: ``file`` relative to the report's folder, the section it belongs to
    (``"missed"`` or ``"false"``), and its caption."""

    file: str
    section: str
    caption: str


def _stat(stats: dict[str, Any], key: str) -> float:
    value = stats.get(key, -1.0)
    return float(value.reshape(-1)[0]) if isinstance(value, Tensor) else float(value)


def _per_class_rows(stats: dict[str, Any], class_names: Sequence[str] | None) -> list[list[str]]:
    """One row per class: name, AP, AR@100, F1 at the chosen confidence, objects, missed, false detections."""
    summary = stats.get("detection_summary")
    classes = stats.get("classes")
    ids = [int(c) for c in classes.reshape(-1).tolist()] if isinstance(classes, Tensor) else []
    ap, ar = stats.get("map_per_class"), stats.get("mar_100_per_class")
    ap = ap.reshape(-1).tolist() if isinstance(ap, Tensor) and ap.numel() == len(ids) else [-1.0] * len(ids)
    ar = ar.reshape(-1).tolist() if isinstance(ar, Tensor) and ar.numel() == len(ids) else [-1.0] * len(ids)
    num = max([len(class_names or [])] + [c + 1 for c in ids])
    if summary is not None:
        num = max(num, len(summary.confusion_matrix) - 1)
    by_id = {c: (a, r) for c, a, r in zip(ids, ap, ar, strict=True)}
    rows = []
    for c in range(num):
        name = str(class_names[c]) if class_names is not None and c < len(class_names) else str(c)
        a, r = by_id.get(c, (-1.0, -1.0))
        row = [name, "-" if a < 0 else f"{a:.3f}", "-" if r < 0 else f"{r:.3f}"]
        if summary is not None and c < len(summary.confusion_matrix) - 1:
            matrix, f1 = summary.confusion_matrix, summary.f1
            at = int(np.searchsorted(f1.confidences, summary.confusion_conf, side="right")) - 1
            f1_c = float(f1.f1[c, max(at, 0)]) if c < len(f1.f1) else 0.0
            row += [
                f"{f1_c:.3f}",
                str(int(matrix[c].sum())),
                str(int(matrix[c, -1])),
                str(int(matrix[-1, c])),
            ]
        else:
            row += ["-", "-", "-", "-"]
        rows.append(row)
    return rows


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], css: str) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "\n".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f'<table class="{css}">\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>'


def _figure(file: str, caption: str) -> str:
    src, text = html.escape(file, quote=True), html.escape(caption)
    return (
        f'<figure><a href="{src}"><img src="{src}" alt="{text}"></a><figcaption>{text}</figcaption></figure>'
    )


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
td, th { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: right; }
td:first-child, th:first-child { text-align: left; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; }
img { max-width: 900px; max-height: 700px; border: 1px solid #ddd; }
pre { background: #f6f6f6; padding: 0.8em; }
"""


def write_report(
    out_dir: str | Path,
    stats: dict[str, Any],
    class_names: Sequence[str] | None = None,
    gallery: Sequence[GalleryImage] = (),
    title: str = "detforge report",
    notes: Sequence[str] = (),
) -> Path:
    """Write ``out_dir/report.html`` and return its path.

    Args:
        out_dir: the run (or ``val --out``) folder; the pictures of :data:`PICTURES` found there are shown.
        stats: a ``DetectionMAP.compute()`` dict as ``ObjectDetector.last_val_stats`` holds it (the 12 COCO
            numbers, ``map_per_class``, ``mar_100_per_class``, ``classes``, and ``detection_summary`` when the
            F1 curve was computed).
        class_names: one name per label.
        gallery: pictures already written under ``out_dir`` (:func:`gallery_images`).
        title: the page's heading.
        notes: lines shown under the heading (what was evaluated, on which data).
    """
    from detforge.engine.callbacks import atomic_write
    from detforge.metrics.coco import COCO_STAT_NAMES
    from detforge.metrics.table import format_coco_table

    out = Path(out_dir)
    summary = stats.get("detection_summary")
    parts = [f"<h1>{html.escape(title)}</h1>"]
    parts += [f"<p>{html.escape(line)}</p>" for line in notes]
    if summary is not None:
        conf = summary.confusion_conf
        best = summary.f1.best_conf
        how = (
            "the F1-best confidence" if best is not None else "no detection is right: the default confidence"
        )
        parts.append(
            f"<p>Confidence threshold {conf:.3f} ({html.escape(how)}; overall F1 {summary.f1.best_f1:.3f}), "
            "the default of <code>detforge predict</code> for this checkpoint.</p>"
        )
    numbers = [_stat(stats, key) for key in COCO_STAT_NAMES]
    parts += ["<h2>COCO metrics</h2>", f"<pre>{html.escape(format_coco_table(numbers))}</pre>"]
    header = ["class", "AP", "AR@100", "F1", "objects", "missed", "false detections"]
    parts += ["<h2>Per class</h2>", _table(header, _per_class_rows(stats, class_names), "per-class")]
    shown = [(file, caption) for file, caption in PICTURES if (out / file).is_file()]
    if shown:
        parts += ["<h2>Pictures</h2>"] + [_figure(file, caption) for file, caption in shown]
    for section, heading in (("missed", "Most missed objects"), ("false", "Most false detections")):
        items = [g for g in gallery if g.section == section]
        if items:
            parts += [f"<h2>{heading}</h2>"] + [_figure(g.file, g.caption) for g in items]
    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(parts)
        + "\n</body>\n</html>\n"
    )
    return atomic_write(out / "report.html", lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))


def gallery_images(
    out_dir: str | Path,
    predict: Any,
    dataset: Any,
    missed: np.ndarray,
    false: np.ndarray,
    conf: float,
    class_names: Sequence[str] | None = None,
    count: int = 6,
) -> list[GalleryImage]:
    """Draw the ``count`` validation images with the most missed objects and the ``count`` with the most false
    detections (none with zero), ground truth beside the predictions at ``conf``, into ``out_dir/report/``.

    Args:
        predict: ``(images Tensor[B, C, H, W] in [0, 1], image_sizes list[(h, w)]) -> list of detection
            dicts`` in the images' pixels (``ObjectDetector.predict``).
        dataset: the validation data set, whose item ``i`` is the image the ``i``-th counts belong to.
        missed, false: int [num_images] per image (:func:`detforge.metrics.confusion.image_errors`).
        conf: the confidence the counts were taken at; the predictions are drawn from it.
    """
    from detforge.data.datamodule import detection_collate
    from detforge.engine.callbacks import _side_by_side, atomic_write, draw_ground_truth, draw_predictions
    from detforge.targets import image_sizes_of

    out = Path(out_dir) / GALLERY_DIR
    names = list(class_names) if class_names is not None else None
    picked: list[tuple[str, int, str]] = []
    for section, counts, what in (("missed", missed, "missed objects"), ("false", false, "false detections")):
        order = np.argsort(-np.asarray(counts), kind="stable")[:count]  # most first; ties by image index
        picked += [
            (section, int(i), f"image {int(i)}: {int(counts[i])} {what}") for i in order if counts[i] > 0
        ]
    if not picked or len(dataset) < max(i for _, i, _ in picked) + 1:
        return []
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for section, index, caption in picked:
        images, targets = detection_collate([dataset[index]])  # [1, C, H, W]
        with torch.no_grad():
            pred = predict(images, image_sizes_of(targets, images))[0]
        h, w = (int(v) for v in targets[0]["size"])
        image = images[0, :, :h, :w].float()  # [C, h, w]
        truth = targets[0]
        scale = max(1, -(-MIN_SIDE // max(h, w)))  # small images drawn larger: class names stay readable
        if scale > 1:
            image = torch.nn.functional.interpolate(image[None], scale_factor=scale, mode="nearest")[0]
            pred = {**pred, "boxes": pred["boxes"] * scale}
            truth = {**truth, "boxes": truth["boxes"] * scale}
        panel = _side_by_side(
            draw_ground_truth(image, truth, names), draw_predictions(image, pred, names, conf), gap=4
        )  # [3, H, 2W + 4] uint8
        file = f"{GALLERY_DIR}/{section}_{index}.jpg"
        array = panel.permute(1, 2, 0).contiguous().numpy()  # [H, W, 3]

        def save(tmp: str, array: np.ndarray = array) -> None:
            from PIL import Image

            Image.fromarray(array).save(tmp, format="JPEG", quality=90)

        atomic_write(Path(out_dir) / file, save)
        written.append(GalleryImage(file, section, caption))
    return written


def write_run_report(run_dir: str | Path, pl_module: Any, dataset: Any, world_size: int = 1) -> Path | None:
    """``report.html`` of a training run from its last validation (``ObjectDetector.last_val_stats``), the
    gallery drawn with the model on the validation ``dataset``. None when the run never validated. The gallery
    needs the validation's image order to be the data set's: with several processes (DDP) each validated its
    own share, so the page goes without it and says so."""
    from detforge.metrics.confusion import image_errors
    from detforge.metrics.metric import DetectionMAP

    stats = getattr(pl_module, "last_val_stats", None)
    if not stats:
        return None
    class_names = getattr(pl_module, "class_names", None)
    summary = stats.get("detection_summary")
    inputs = next(
        (
            m.last_inputs
            for m in getattr(pl_module, "val_metrics", {}).values()
            if isinstance(m, DetectionMAP)
        ),
        None,
    )
    gallery, notes = [], []
    if summary is not None and inputs is not None and dataset is not None:
        if world_size > 1 or len(dataset) != inputs.num_images:
            notes.append(
                "No gallery: the validation ran in several processes, so its images are not in order."
            )
        else:
            missed, false = image_errors(inputs, summary.confusion_conf)
            was_training = pl_module.training
            pl_module.eval()
            try:
                gallery = gallery_images(
                    run_dir,
                    lambda images, sizes: pl_module.predict(images.to(pl_module.device), sizes),
                    dataset,
                    missed,
                    false,
                    summary.confusion_conf,
                    class_names,
                )
            finally:
                pl_module.train(was_training)
    return write_report(
        run_dir, stats, class_names, gallery, title=f"detforge run {Path(run_dir).name}", notes=notes
    )
