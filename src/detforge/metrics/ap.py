"""Pascal VOC average precision: a small, readable API for lists of boxes.

    dets = [DetectionResult([10, 10, 50, 50], 0.9, 0), DetectionResult([30, 30, 80, 80], 0.8, 0)]
    gts = [GroundTruth([12, 12, 48, 48], 0)]
    compute_ap(dets, gts)                           # 1.0 (11-point, IoU 0.5)

Matching follows the VOC devkit: detections highest score first; each takes the ground truth of its image
and class it overlaps most; a hit (IoU >= threshold) on a free ground truth is a true positive, on a taken
one a false positive (duplicate), on a ``difficult`` one neither. For COCO's exact numbers use
``COCOEvaluator``; ``compute_coco_map`` here is the simple VOC-style mean over IoU 0.50:0.05:0.95.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torchvision.ops import box_iou

__all__ = ["APMethod", "DetectionResult", "GroundTruth", "compute_ap", "compute_coco_map", "compute_map"]

APMethod = Literal["11_point", "all_points", "101_point"]
_METHODS = ("11_point", "all_points", "101_point")


@dataclass(frozen=True)
class DetectionResult:
    """One detection.

    Attributes:
        bbox: ``[x1, y1, x2, y2]`` pixels (sequence or Tensor[4]).
        confidence: score; higher is more confident.
        class_id: 0-indexed class.
        image_id: the image it belongs to (matching never crosses images).
    """

    bbox: Sequence[float] | torch.Tensor
    confidence: float
    class_id: int
    image_id: int = 0


@dataclass(frozen=True)
class GroundTruth:
    """One ground-truth object: ``bbox`` ``[x1, y1, x2, y2]`` pixels, 0-indexed ``class_id``, ``image_id``,
    and ``difficult`` (VOC: neither a hit nor a miss)."""

    bbox: Sequence[float] | torch.Tensor
    class_id: int
    image_id: int = 0
    difficult: bool = False


def _check_method(method: str) -> None:
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")


def _boxes(items: Sequence[DetectionResult] | Sequence[GroundTruth]) -> torch.Tensor:
    if not items:
        return torch.zeros((0, 4), dtype=torch.float64)
    boxes = torch.stack([torch.as_tensor(i.bbox, dtype=torch.float64).reshape(4) for i in items])  # [N, 4]
    bad = ~torch.isfinite(boxes).all(1) | (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    if bad.any():
        i = int(bad.nonzero()[0])
        raise ValueError(
            f"{type(items[i]).__name__} #{i}: bbox must be finite xyxy with x2>=x1, y2>=y1, got {boxes[i].tolist()}"
        )
    return boxes


def _interpolated_ap(recall: np.ndarray, precision: np.ndarray, method: str) -> float:
    """Area under the precision-recall curve (recall, precision: float64 [N], in detection order)."""
    if method == "all_points":
        mrec = np.concatenate([[0.0], recall, [1.0]])
        mpre = np.concatenate([[0.0], precision, [0.0]])
        mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # precision envelope, non-increasing
        step = np.flatnonzero(mrec[1:] != mrec[:-1])
        return float(np.sum((mrec[step + 1] - mrec[step]) * mpre[step + 1]))
    if len(precision) == 0:
        return 0.0
    # VOC 2007's devkit samples np.arange(0, 1.1, 0.1); COCO samples 101 points with linspace.
    points = np.arange(0.0, 1.1, 0.1) if method == "11_point" else np.linspace(0.0, 1.0, 101)
    envelope = np.maximum.accumulate(precision[::-1])[::-1]  # max precision from here on
    idx = np.searchsorted(recall, points, side="left")  # first detection reaching each recall point
    values = np.where(idx < len(envelope), envelope[np.minimum(idx, len(envelope) - 1)], 0.0)
    return float(values.mean())


def compute_ap(
    detections: Sequence[DetectionResult],
    ground_truths: Sequence[GroundTruth],
    iou_threshold: float = 0.5,
    method: APMethod = "11_point",
) -> float:
    """Average precision of one class (or of whatever is passed; matching stays within image and class).

    Args:
        detections: the detections to rank.
        ground_truths: the objects to find.
        iou_threshold: a detection hits an object when IoU >= this.
        method: ``"11_point"`` (VOC 2007), ``"all_points"`` (VOC 2010+) or ``"101_point"`` (COCO sampling).

    Returns:
        AP in [0, 1]; 0.0 when there is no (non-difficult) ground truth.
    """
    _check_method(method)
    dets = sorted(detections, key=lambda d: -float(d.confidence))  # stable: input order breaks ties
    num_pos = sum(not g.difficult for g in ground_truths)
    if num_pos == 0:
        return 0.0
    d_boxes, g_boxes = _boxes(dets), _boxes(ground_truths)
    ious = (
        box_iou(d_boxes, g_boxes)
        if len(dets) and len(ground_truths)
        else torch.zeros(len(dets), len(ground_truths))
    )
    same = torch.tensor(
        [[(d.image_id, d.class_id) == (g.image_id, g.class_id) for g in ground_truths] for d in dets],
        dtype=torch.bool,
    ).reshape(len(dets), len(ground_truths))  # [D, G]
    ious = torch.where(same, ious, torch.full_like(ious, -1.0)).numpy()  # [D, G]
    difficult = np.array([g.difficult for g in ground_truths], dtype=bool)
    taken = np.zeros(len(ground_truths), dtype=bool)
    tp = np.zeros(len(dets))
    fp = np.zeros(len(dets))
    for i in range(len(dets)):  # sequential by nature: each match takes a ground truth away from later ones
        j = int(np.argmax(ious[i])) if ious.shape[1] else -1
        if j < 0 or ious[i, j] < iou_threshold:
            fp[i] = 1
        elif difficult[j]:
            continue
        elif taken[j]:
            fp[i] = 1
        else:
            tp[i], taken[j] = 1, True
    tp_cum, fp_cum = np.cumsum(tp), np.cumsum(fp)
    recall = tp_cum / num_pos
    precision = tp_cum / np.maximum(tp_cum + fp_cum, np.finfo(np.float64).eps)
    return _interpolated_ap(recall, precision, method)


def _flatten(all_items: Sequence) -> list:
    """Per-image lists (image id = position) or one flat list (image ids as given) -> one flat list."""
    if not all_items or isinstance(all_items[0], (DetectionResult, GroundTruth)):
        return list(all_items)
    flat = []
    for image_index, items in enumerate(all_items):
        for it in items:
            flat.append(type(it)(**{**it.__dict__, "image_id": image_index}))
    return flat


def compute_map(
    all_detections: Sequence[Sequence[DetectionResult]] | Sequence[DetectionResult],
    all_ground_truths: Sequence[Sequence[GroundTruth]] | Sequence[GroundTruth],
    num_classes: int,
    iou_threshold: float = 0.5,
    method: APMethod = "11_point",
) -> float:
    """Mean AP over the classes ``0..num_classes-1`` that have ground truth (VOC convention).

    ``all_detections`` / ``all_ground_truths`` are per-image lists (list ``i`` belongs to image ``i``), or
    flat lists whose items carry their ``image_id``. Returns 0.0 when no class has ground truth.
    """
    _check_method(method)
    dets, gts = _flatten(all_detections), _flatten(all_ground_truths)
    for i, item in enumerate([*dets, *gts]):
        if not 0 <= int(item.class_id) < num_classes:
            raise ValueError(
                f"{type(item).__name__} #{i}: class_id {item.class_id} not in [0, {num_classes})"
            )
    aps = []
    for c in range(num_classes):
        g = [x for x in gts if x.class_id == c]
        if not any(not x.difficult for x in g):
            continue
        aps.append(compute_ap([d for d in dets if d.class_id == c], g, iou_threshold, method))
    return float(np.mean(aps)) if aps else 0.0


def compute_coco_map(
    all_detections: Sequence[Sequence[DetectionResult]] | Sequence[DetectionResult],
    all_ground_truths: Sequence[Sequence[GroundTruth]] | Sequence[GroundTruth],
    num_classes: int,
    method: APMethod = "101_point",
) -> float:
    """Mean of ``compute_map`` over IoU 0.50, 0.55, ..., 0.95 (101-point sampling by default).

    This is the VOC-style matcher averaged over thresholds; ``COCOEvaluator`` gives COCO's exact numbers
    (crowds, area ranges, max detections).
    """
    thresholds = np.linspace(0.5, 0.95, 10)
    return float(
        np.mean([compute_map(all_detections, all_ground_truths, num_classes, t, method) for t in thresholds])
    )
