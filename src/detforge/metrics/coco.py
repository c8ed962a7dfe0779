"""COCO box evaluation that agrees with pycocotools to the last digit, vectorised over the whole data set.

    result = COCOEvaluator().evaluate(CocoGroundTruth.from_coco_dict(gt), CocoDetections.from_coco_results(dt))
    result.stats            # the 12 numbers, pycocotools' order
    result.per_class_ap     # {category id: AP@[.5:.95]} (-1 for categories without ground truth)

``evaluate_coco_files(gt_json, results_json)`` does the same from files. Semantics are pycocotools' bbox
evaluation: crowd matching, ignore flags, area ranges on the annotation's ``area``, max detections per image
and category, 101-point interpolation, -1 for undefined values.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from detforge.metrics.coco_accumulate import accumulate, summarize
from detforge.metrics.coco_data import CocoDetections, CocoGroundTruth
from detforge.metrics.coco_match import match_groups

__all__ = [
    "COCO_AREA_RANGES",
    "COCO_STAT_NAMES",
    "COCOEvalResult",
    "COCOEvaluator",
    "evaluate_coco_files",
    "load_coco_json",
]

COCO_AREA_RANGES: dict[str, tuple[float, float]] = {
    "all": (0.0**2, 1e5**2),
    "small": (0.0**2, 32.0**2),
    "medium": (32.0**2, 96.0**2),
    "large": (96.0**2, 1e5**2),
}
COCO_STAT_NAMES = (
    "map",
    "map_50",
    "map_75",
    "map_small",
    "map_medium",
    "map_large",
    "mar_1",
    "mar_10",
    "mar_100",
    "mar_small",
    "mar_medium",
    "mar_large",
)


def _default_iou_thresholds() -> np.ndarray:
    return np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)


def _default_recall_thresholds() -> np.ndarray:
    return np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)


@dataclass
class COCOEvalResult:
    """Everything one evaluation produced.

    Attributes:
        stats (float64 [12]): AP, AP50, AP75, AP small/medium/large, AR@1/10/100, AR small/medium/large.
        precision (float64 [T, R, K, A, M]): interpolated precision; -1 for categories without ground truth.
        recall (float64 [T, K, A, M]): final recall; -1 likewise.
        scores (float64 [T, R, K, A, M]): detection score at each recall point.
        category_ids (int64 [K]), image_ids (int64 [I]), iou_thresholds (float64 [T]),
        recall_thresholds (float64 [R]), area_labels (A names), max_detections (M ints).
        category_names: category id -> name where known.
    """

    stats: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    scores: np.ndarray
    category_ids: np.ndarray
    image_ids: np.ndarray
    iou_thresholds: np.ndarray
    recall_thresholds: np.ndarray
    area_labels: list[str]
    max_detections: list[int]
    category_names: dict[int, str] = field(default_factory=dict)

    def _per_class(self, values: np.ndarray) -> dict[int, float]:
        out = {}
        for k, cat in enumerate(self.category_ids.tolist()):
            v = values[..., k]
            v = v[v > -1]
            out[cat] = float(np.mean(v)) if v.size else -1.0
        return out

    @property
    def per_class_ap(self) -> dict[int, float]:
        """Category id -> AP@[.5:.95] (area all, most detections); -1 where the category has no ground truth."""
        return self._per_class(self.precision[:, :, :, 0, -1])  # [T, R, K]

    @property
    def per_class_ar(self) -> dict[int, float]:
        """Category id -> AR@[.5:.95] (area all, most detections); -1 where the category has no ground truth."""
        return self._per_class(self.recall[:, :, 0, -1])  # [T, K]

    def as_dict(self) -> dict[str, float]:
        """The 12 stats under torchmetrics' names (``map``, ``map_50``, ..., ``mar_large``)."""
        return dict(zip(COCO_STAT_NAMES, map(float, self.stats)))

    def table(self, class_names: Mapping[int, str] | None = None, per_class: bool = True) -> str:
        """The 12 lines as pycocotools prints them, then a per-class AP table."""
        from detforge.metrics.table import format_coco_table

        names = class_names if class_names is not None else self.category_names
        return format_coco_table(
            self.stats,
            per_class_ap=self.per_class_ap if per_class else None,
            class_names=names,
            max_detections=self.max_detections,
        )


class COCOEvaluator:
    """pycocotools-exact bbox evaluation over flat arrays.

    Args:
        iou_thresholds (Sequence[float] | None): default 0.50:0.05:0.95 (pycocotools' linspace values).
        recall_thresholds (Sequence[float] | None): default 0:0.01:1 (101 points).
        max_detections (Sequence[int]): per image and category; default (1, 10, 100).
        area_ranges (Mapping[str, tuple[float, float]] | None): label -> (min, max) area, both ends included;
            default all / small / medium / large.
    """

    def __init__(
        self,
        iou_thresholds: Sequence[float] | None = None,
        recall_thresholds: Sequence[float] | None = None,
        max_detections: Sequence[int] = (1, 10, 100),
        area_ranges: Mapping[str, tuple[float, float]] | None = None,
    ) -> None:
        self.iou_thresholds = (
            _default_iou_thresholds() if iou_thresholds is None else np.asarray(iou_thresholds, np.float64)
        )
        self.recall_thresholds = (
            _default_recall_thresholds()
            if recall_thresholds is None
            else np.asarray(recall_thresholds, np.float64)
        )
        self.max_detections = sorted(int(m) for m in max_detections)
        self.area_ranges = dict(COCO_AREA_RANGES if area_ranges is None else area_ranges)
        if self.iou_thresholds.ndim != 1 or len(self.iou_thresholds) == 0:
            raise ValueError(f"iou_thresholds must be a non-empty list, got {iou_thresholds!r}")
        if not self.max_detections or self.max_detections[0] < 1:
            raise ValueError(f"max_detections must be positive integers, got {max_detections!r}")
        if not self.area_ranges:
            raise ValueError("area_ranges must name at least one range")

    def evaluate(
        self,
        ground_truth: CocoGroundTruth,
        detections: CocoDetections,
        image_ids: Sequence[int] | None = None,
        category_ids: Sequence[int] | None = None,
    ) -> COCOEvalResult:
        """Evaluate ``detections`` against ``ground_truth``.

        Only images in ``image_ids`` (default: all of the ground truth's images) and categories in
        ``category_ids`` (default: all of its categories) count; other rows are left out, as with
        pycocotools' ``params.imgIds`` / ``params.catIds``.
        """
        gt, dt = ground_truth, detections
        img_ids = np.unique(gt.all_image_ids if image_ids is None else np.asarray(image_ids, np.int64))
        cat_ids = np.unique(
            gt.all_category_ids if category_ids is None else np.asarray(category_ids, np.int64)
        )
        if np.isnan(dt.scores).any():
            raise ValueError(f"detections: score is NaN at row {int(np.flatnonzero(np.isnan(dt.scores))[0])}")
        num_cat = len(cat_ids)
        labels = list(self.area_ranges)
        area_lo = np.array([self.area_ranges[a][0] for a in labels], np.float64)[:, None]  # [A, 1]
        area_hi = np.array([self.area_ranges[a][1] for a in labels], np.float64)[:, None]  # [A, 1]

        def index(values: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            idx = np.minimum(np.searchsorted(ids, values), max(len(ids) - 1, 0))
            ok = (ids[idx] == values) if len(ids) else np.zeros(len(values), bool)
            return idx, ok

        # Ground truth: keep rows on evaluated images and categories, sort by group (stable: file order).
        g_img, g_ok1 = index(gt.image_ids, img_ids)
        g_cat, g_ok2 = index(gt.category_ids, cat_ids)
        keep = np.flatnonzero(g_ok1 & g_ok2)
        g_group = g_img[keep] * num_cat + g_cat[keep]  # [G]
        g_order = keep[np.argsort(g_group, kind="stable")]  # [G]
        g_group = np.sort(g_group, kind="stable")
        g_area = gt.areas[g_order]  # [G]
        g_ignore = gt.ignore[g_order][None, :] | (g_area < area_lo) | (g_area > area_hi)  # [A, G]
        num_gt = np.zeros((num_cat, len(labels)), np.int64)  # [K, A]
        g_cat_sorted = g_group % max(num_cat, 1)
        for a in range(len(labels)):
            num_gt[:, a] = np.bincount(g_cat_sorted[~g_ignore[a]], minlength=num_cat)

        # Detections: keep evaluated rows, sort by (group, score desc, file order), cut to max detections.
        d_img, d_ok1 = index(dt.image_ids, img_ids)
        d_cat, d_ok2 = index(dt.category_ids, cat_ids)
        keep = np.flatnonzero(d_ok1 & d_ok2)
        d_group = d_img[keep] * num_cat + d_cat[keep]
        d_order = keep[np.lexsort((keep, -dt.scores[keep], d_group))]  # [D]
        d_group = d_img[d_order] * num_cat + d_cat[d_order]  # [D]
        first = np.ones(len(d_group), dtype=bool)
        first[1:] = d_group[1:] != d_group[:-1]
        d_rank = np.arange(len(d_group)) - np.maximum.accumulate(np.where(first, np.arange(len(d_group)), 0))
        top = d_rank < self.max_detections[-1]
        d_order, d_group, d_rank = d_order[top], d_group[top], d_rank[top]
        d_boxes = dt.boxes[d_order]  # [D, 4]
        d_area = d_boxes[:, 2] * d_boxes[:, 3]  # [D]
        d_out_of_range = (d_area < area_lo) | (d_area > area_hi)  # [A, D]

        matches = match_groups(
            det_group=d_group,
            det_rank=d_rank,
            det_boxes=d_boxes,
            gt_group=g_group,
            gt_boxes=gt.boxes[g_order],
            gt_crowd=gt.iscrowd[g_order],
            gt_ignore=g_ignore,
            iou_thresholds=self.iou_thresholds,
        )
        # An unmatched detection is a false positive, or ignored when outside the area range; a matched one
        # is a true positive, or ignored when its gt is. pycocotools stores the matched gt id and reads 0 as
        # "unmatched": a match to a gt with id 0 is never a true positive and counts like an unmatched one.
        a, d, g = matches.area, matches.det, matches.gt  # [N] each
        id_zero = gt.ann_ids[g_order][g] == 0  # [N]
        match_ignored = g_ignore[a, g] | (id_zero & d_out_of_range[a, d])  # [N]
        precision, recall, scores = accumulate(
            det_category=d_group % max(num_cat, 1),
            det_image=d_group // max(num_cat, 1),
            det_rank=d_rank,
            det_scores=dt.scores[d_order],
            det_out_of_range=d_out_of_range,
            match_thr=matches.thr,
            match_area=a,
            match_det=d,
            match_tp=~id_zero & ~g_ignore[a, g],
            match_counted=~match_ignored,
            num_thresholds=len(self.iou_thresholds),
            num_gt=num_gt,
            num_categories=num_cat,
            recall_thresholds=self.recall_thresholds,
            max_detections=self.max_detections,
        )
        stats = summarize(
            precision,
            recall,
            iou_thresholds=self.iou_thresholds,
            area_labels=labels,
            max_detections=self.max_detections,
        )
        return COCOEvalResult(
            stats=stats,
            precision=precision,
            recall=recall,
            scores=scores,
            category_ids=cat_ids,
            image_ids=img_ids,
            iou_thresholds=self.iou_thresholds,
            recall_thresholds=self.recall_thresholds,
            area_labels=labels,
            max_detections=self.max_detections,
            category_names={c: gt.category_names[c] for c in cat_ids.tolist() if c in gt.category_names},
        )


def load_coco_json(path: str | Path) -> Any:
    """Read a JSON file; a missing or malformed file raises an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {'not a regular file' if path.exists() else 'no such file'}")
    try:
        with path.open() as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None


def evaluate_coco_files(
    gt_json: str | Path | Mapping[str, Any],
    results_json: str | Path | Sequence[Mapping[str, Any]],
    evaluator: COCOEvaluator | None = None,
) -> COCOEvalResult:
    """Evaluate a COCO results file (or list) against a COCO instances file (or dict).

    Detections on images the ground truth does not list are an error, as in pycocotools' ``loadRes``.
    """
    gt_src = str(gt_json) if isinstance(gt_json, (str, Path)) else "ground truth"
    dt_src = str(results_json) if isinstance(results_json, (str, Path)) else "results"
    gt_data = load_coco_json(gt_json) if isinstance(gt_json, (str, Path)) else gt_json
    dt_data = load_coco_json(results_json) if isinstance(results_json, (str, Path)) else results_json
    if not isinstance(gt_data, Mapping):
        raise ValueError(f"{gt_src}: a COCO instances file is a JSON object, got {type(gt_data).__name__}")
    gt = CocoGroundTruth.from_coco_dict(gt_data, source=gt_src)
    dt = CocoDetections.from_coco_results(list(dt_data) if not isinstance(dt_data, list) else dt_data, dt_src)
    unknown = ~np.isin(dt.image_ids, gt.all_image_ids)
    if unknown.any():
        i = int(np.flatnonzero(unknown)[0])
        raise ValueError(
            f"{dt_src}: detection [{i}] has image_id {int(dt.image_ids[i])}, which {gt_src} does not list "
            f"({int(unknown.sum())} such detections)"
        )
    _warn_unlisted(dt.category_ids, gt.all_category_ids, dt_src, "detection", "category_id", gt_src)
    _warn_unlisted(
        gt.category_ids, gt.all_category_ids, gt_src, "annotation", "category_id", "its categories"
    )
    _warn_unlisted(gt.image_ids, gt.all_image_ids, gt_src, "annotation", "image_id", "its images")
    return (evaluator or COCOEvaluator()).evaluate(gt, dt)


def _warn_unlisted(values: np.ndarray, listed: np.ndarray, src: str, kind: str, key: str, where: str) -> None:
    """Rows whose id is not listed are left out of the evaluation (as pycocotools does): say so, counted."""
    unlisted = ~np.isin(values, listed)
    if unlisted.any():
        i = int(np.flatnonzero(unlisted)[0])
        warnings.warn(
            f"{src}: {int(unlisted.sum())} {kind}(s) have a {key} not listed in {where} and are left out "
            f"of the evaluation (first: {kind} [{i}], {key} {int(values[i])})",
            stacklevel=3,
        )
