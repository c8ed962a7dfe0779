"""Text tables for COCO results: the 12 lines as pycocotools prints them, and a per-class AP table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from detforge.metrics.coco_accumulate import summary_spec

__all__ = ["format_coco_table"]


def format_coco_table(
    stats: Sequence[float] | np.ndarray,
    per_class_ap: Mapping[int, float] | None = None,
    class_names: Mapping[int, str] | Sequence[str] | None = None,
    max_detections: Sequence[int] = (1, 10, 100),
    iou_range: tuple[float, float] = (0.5, 0.95),
) -> str:
    """Format COCO results for a terminal or a log.

    Args:
        stats (12 floats): pycocotools' order (``COCOEvalResult.stats``).
        per_class_ap (dict[int, float] | None): class id -> AP@[.5:.95]; -1 prints as "-" (no ground truth).
        class_names (dict[int, str] | list[str] | None): names by class id (or by position for a list).
        max_detections (3 ints): the max-detection settings the stats were computed with.
        iou_range (tuple[float, float]): first and last IoU threshold, for the header of the averaged lines.
    """
    stats = [float(s) for s in stats]
    if len(stats) != 12:
        raise ValueError(f"stats must hold the 12 COCO numbers, got {len(stats)}")
    line = " {:<18} {} @[ IoU={:<9} | area={:>6s} | maxDets={:>3d} ] = {:0.3f}"
    lines = []
    for value, (is_ap, iou, area, max_det) in zip(stats, summary_spec(list(max_detections))):
        title = "Average Precision" if is_ap else "Average Recall"
        kind = "(AP)" if is_ap else "(AR)"
        iou_str = f"{iou_range[0]:0.2f}:{iou_range[1]:0.2f}" if iou is None else f"{iou:0.2f}"
        lines.append(line.format(title, kind, iou_str, area, max_det, value))
    if per_class_ap:
        if class_names is None:
            names: dict[int, str] = {}
        elif isinstance(class_names, Mapping):
            names = {int(k): str(v) for k, v in class_names.items()}
        else:
            names = dict(enumerate(map(str, class_names)))
        label = {k: names.get(k, str(k)) for k in per_class_ap}
        width = max(5, *(len(v) for v in label.values()))
        lines += ["", f" {'class':<{width}}  {'id':>5}  {'AP':>6}", f" {'-' * width}  {'-' * 5}  {'-' * 6}"]
        for k, ap in per_class_ap.items():
            ap_str = "-" if ap < 0 else f"{ap:0.3f}"
            lines.append(f" {label[k]:<{width}}  {k:>5}  {ap_str:>6}")
    return "\n".join(lines)
