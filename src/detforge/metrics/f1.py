"""Precision, recall and F1 against the confidence threshold, per class and over all classes, and the
confidence that maximises the overall F1.

A detection is a true positive when COCO's matching at IoU 0.5 (:func:`detforge.metrics.coco_match.match_groups`,
the evaluator's own: per image and class, highest score first, each takes the free object of its class it
overlaps most, a counted one before a crowd / ignored one) gives it a counted object; matched to a crowd or
ignored object it is neither true nor false positive, and those objects are never false negatives. Unlike
COCO's AP there is no cap on detections per image. Since matching goes by score, the detections kept at a
confidence ``c`` (score >= ``c``) match exactly as they do among all, so one matching gives the whole curve.

``overall`` pools every detection of every class (micro average): F1 = 2 TP / (2 TP + FP + FN).

:func:`summarize` adds the confusion matrix (:mod:`detforge.metrics.confusion`) at the F1-best confidence:
what a training run and ``detforge val --out`` draw (``f1_curve.png``, ``confusion_matrix.png``) and write to
``results.json``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from detforge.boxes import convert_boxes
from detforge.metrics.coco_match import match_groups
from detforge.metrics.confusion import MatchInputs, _check_threshold, matrix_of_pairs

__all__ = ["DEFAULT_CONF", "DetectionSummary", "F1Curve", "detection_outcomes", "f1_curve", "summarize"]

DEFAULT_CONF = 0.25
"""The confidence threshold used where no F1-best confidence is known (``predict``'s ``--conf`` then)."""


@dataclass(frozen=True)
class F1Curve:
    """Precision / recall / F1 at every confidence of a grid, per class and pooled.

    Attributes:
        confidences (float64 [T]): the grid (score >= confidence is kept).
        precision, recall, f1 (float64 [C, T]): per class (label ``c`` is row ``c``); 0 where undefined.
        overall_precision, overall_recall, overall_f1 (float64 [T]): all classes pooled.
        num_objects (int64 [C]): counted objects of each class.
        num_detections (int64 [C]): detections of each class (any score).
        best_conf: the lowest detection score at which the overall F1 is highest, computed at every distinct
            score (not only on the grid); None when no detection is ever a true positive.
        best_f1: overall F1 at ``best_conf`` (0 when it is None).
        iou_threshold: the matching's IoU threshold.
    """

    confidences: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    overall_precision: np.ndarray
    overall_recall: np.ndarray
    overall_f1: np.ndarray
    num_objects: np.ndarray
    num_detections: np.ndarray
    best_conf: float | None
    best_f1: float
    iou_threshold: float


def detection_outcomes(inputs: MatchInputs, iou_threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """COCO's matching of every detection at ``iou_threshold`` (module docstring).

    Returns:
        (true_positive bool [D], false_positive bool [D]) in the rows of ``inputs``; a detection that is neither
        matched a crowd or ignored object.
    """
    iou_threshold = _check_threshold("iou_threshold", iou_threshold)
    num_det = len(inputs.det_scores)
    labels = np.concatenate([inputs.det_labels.numpy(), inputs.gt_labels.numpy()])
    if len(labels) and labels.min() < 0:
        raise ValueError(f"labels must be >= 0 for the F1 curve, got {int(labels.min())}")
    side = int(labels.max()) + 1 if len(labels) else 1
    d_group = inputs.det_image.numpy() * side + inputs.det_labels.numpy()  # [D] (image, class)
    scores = inputs.det_scores.numpy()
    d_order = np.lexsort((np.arange(num_det), -scores, d_group))  # [D] group, score desc, input order
    d_sorted_group = d_group[d_order]
    first = np.ones(num_det, dtype=bool)
    first[1:] = d_sorted_group[1:] != d_sorted_group[:-1]
    d_rank = np.arange(num_det) - np.maximum.accumulate(np.where(first, np.arange(num_det), 0))  # [D]
    g_group = inputs.gt_image.numpy() * side + inputs.gt_labels.numpy()  # [G]
    g_order = np.argsort(g_group, kind="stable")  # [G] group, input order
    g_ignored = (~inputs.gt_counted.numpy())[g_order]  # [G]
    matches = match_groups(
        det_group=d_sorted_group,
        det_rank=d_rank,
        det_boxes=convert_boxes(inputs.det_boxes.numpy()[d_order], "xyxy", "xywh"),  # [D, 4] float64
        gt_group=g_group[g_order],
        gt_boxes=convert_boxes(inputs.gt_boxes.numpy()[g_order], "xyxy", "xywh"),  # [G, 4] float64
        gt_crowd=inputs.gt_crowd.numpy()[g_order],
        gt_ignore=g_ignored[None, :],  # [1, G]
        iou_thresholds=np.array([iou_threshold]),
    )
    true_positive = np.zeros(num_det, dtype=bool)
    matched = np.zeros(num_det, dtype=bool)
    matched[d_order[matches.det]] = True
    true_positive[d_order[matches.det]] = ~g_ignored[matches.gt]
    return true_positive, ~matched


def _best_conf(
    scores: np.ndarray, tp: np.ndarray, fp: np.ndarray, num_objects: int
) -> tuple[float | None, float]:
    """The lowest distinct score with the highest pooled F1, and that F1; (None, 0) without a true positive."""
    if not tp.any():
        return None, 0.0
    order = np.argsort(-scores, kind="stable")  # [D] score desc
    s = scores[order]
    tp_cum, fp_cum = np.cumsum(tp[order]), np.cumsum(fp[order])  # [D] kept at score >= s[i]
    last = np.ones(len(s), dtype=bool)
    last[:-1] = s[:-1] != s[1:]  # the last row of each run of equal scores: every detection >= that score
    tp_at, fp_at, at = tp_cum[last], fp_cum[last], s[last]  # [S] distinct scores, descending
    f1 = (
        2 * tp_at / (tp_at + fp_at + num_objects)
    )  # = 2TP / (2TP + FP + FN); integers, one rounding: ties exact
    best = np.flatnonzero(f1 == f1.max())[-1]  # the lowest score among the ties
    return float(at[best]), float(f1[best])


def f1_curve(
    inputs: MatchInputs,
    num_classes: int | None = None,
    iou_threshold: float = 0.5,
    num_points: int = 1001,
) -> F1Curve:
    """Precision, recall and F1 of ``inputs`` at ``num_points`` confidences from 0 to 1 (step 0.001 for 1001),
    per class and pooled, and the F1-best confidence (:class:`F1Curve`).

    Args:
        inputs: detections and ground truth (:class:`~detforge.metrics.confusion.MatchInputs`).
        num_classes: rows of the per-class arrays; None: one more than the largest label.
        iou_threshold: a true positive overlaps its object by at least this IoU.
        num_points: grid size (>= 2).
    """
    if num_points < 2:
        raise ValueError(f"num_points must be >= 2, got {num_points}")
    tp, fp = detection_outcomes(inputs, iou_threshold)  # [D] each
    labels = inputs.det_labels.numpy()
    counted = inputs.gt_counted.numpy()
    num_classes = max(int(num_classes or 0), inputs.num_classes(), 1)
    if len(labels) and labels.max() >= num_classes:
        raise ValueError(f"detection label {int(labels.max())} outside [0, {num_classes})")
    num_objects = np.bincount(inputs.gt_labels.numpy()[counted], minlength=num_classes)[:num_classes]  # [C]
    grid = np.linspace(0.0, 1.0, num_points)  # [T]
    scores = inputs.det_scores.numpy()
    # a detection counts at grid points <= its score: bin b = how many there are; count at t = sum over b > t
    bins = np.searchsorted(grid, scores, side="right")  # [D] in [0, T]

    def counts(mask: np.ndarray) -> np.ndarray:
        hist = np.bincount(
            labels[mask] * (num_points + 1) + bins[mask], minlength=num_classes * (num_points + 1)
        )
        hist = hist.reshape(num_classes, num_points + 1)  # [C, T + 1]
        return np.cumsum(hist[:, ::-1], axis=1)[:, ::-1][:, 1:]  # [C, T]: detections with score >= grid[t]

    tp_c, fp_c = counts(tp), counts(fp)  # [C, T]
    n = num_objects[:, None]  # [C, 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(tp_c + fp_c > 0, tp_c / (tp_c + fp_c), 0.0)
        recall = np.where(n > 0, tp_c / np.maximum(n, 1), 0.0)
        f1 = np.where(tp_c + fp_c + n > 0, 2 * tp_c / (tp_c + fp_c + n), 0.0)  # 2TP / (2TP + FP + FN)
        tp_all, fp_all, n_all = tp_c.sum(0), fp_c.sum(0), int(num_objects.sum())  # [T]
        overall_p = np.where(tp_all + fp_all > 0, tp_all / (tp_all + fp_all), 0.0)
        overall_r = tp_all / max(n_all, 1)
        overall_f1 = np.where(tp_all + fp_all + n_all > 0, 2 * tp_all / (tp_all + fp_all + n_all), 0.0)
    best_conf, best_f1 = _best_conf(scores, tp, fp, n_all)
    return F1Curve(
        confidences=grid,
        precision=precision,
        recall=recall,
        f1=f1,
        overall_precision=overall_p,
        overall_recall=overall_r,
        overall_f1=overall_f1,
        num_objects=num_objects.astype(np.int64),
        num_detections=np.bincount(labels, minlength=num_classes)[:num_classes].astype(np.int64),
        best_conf=best_conf,
        best_f1=best_f1,
        iou_threshold=float(iou_threshold),
    )


@dataclass(frozen=True)
class DetectionSummary:
    """The F1 curve of an evaluation and its confusion matrix at the F1-best confidence.

    Attributes:
        f1: :class:`F1Curve`.
        confusion_matrix (int64 [C + 1, C + 1]): rows true classes, columns predicted, last background
            (:func:`detforge.metrics.confusion.matrix_of_pairs`), at ``confusion_conf`` and the same IoU.
        confusion_conf: ``f1.best_conf``, or :data:`DEFAULT_CONF` when that is None.
    """

    f1: F1Curve
    confusion_matrix: np.ndarray
    confusion_conf: float

    def results(self, class_names: Sequence[str] | None = None) -> dict[str, Any]:
        """The ``results.json`` entries: ``best_conf`` (None when no detection is right), ``f1`` (overall F1
        at ``best_conf``), ``confusion_matrix`` (rows true, columns predicted, in ``class_names`` order then
        background), ``confusion_conf`` and ``class_names`` (one per class; the label where unnamed)."""
        num_classes = len(self.confusion_matrix) - 1
        names = list(class_names or [])
        return {
            "best_conf": self.f1.best_conf,
            "f1": self.f1.best_f1,
            "confusion_matrix": self.confusion_matrix.tolist(),
            "confusion_conf": self.confusion_conf,
            "class_names": [str(names[c]) if c < len(names) else str(c) for c in range(num_classes)],
        }


def summarize(
    inputs: MatchInputs, num_classes: int | None = None, iou_threshold: float = 0.5
) -> DetectionSummary:
    """:func:`f1_curve` of ``inputs`` and the confusion matrix at its best confidence (:class:`DetectionSummary`).
    ``num_classes``: C of both; None or fewer than the labels need: one more than the largest label."""
    curve = f1_curve(inputs, num_classes, iou_threshold)
    conf = DEFAULT_CONF if curve.best_conf is None else curve.best_conf
    matrix = matrix_of_pairs(inputs, len(curve.num_objects), conf, iou_threshold)
    return DetectionSummary(f1=curve, confusion_matrix=matrix, confusion_conf=float(conf))
