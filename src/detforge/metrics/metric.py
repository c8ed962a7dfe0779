"""``DetectionMAP``: a torchmetrics ``Metric`` over detforge's predictions, computed with ``COCOEvaluator``.

Takes the same inputs as torchmetrics' ``MeanAveragePrecision`` and returns the same keys, with
pycocotools' exact numbers and a fraction of the time. States are concatenated across DDP ranks.
From the same detections :meth:`DetectionMAP.summary` gives the F1-confidence curve, the F1-best confidence
and the confusion matrix at it (:mod:`detforge.metrics.f1`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from detforge.boxes import BoxFormat, convert_boxes
from detforge.metrics.coco import COCOEvalResult, COCOEvaluator
from detforge.metrics.coco_data import CocoDetections, CocoGroundTruth
from detforge.metrics.confusion import MatchInputs
from detforge.metrics.f1 import DetectionSummary, summarize

__all__ = ["DetectionMAP"]

_BOX_FORMATS = ("xyxy", "xywh", "cxcywh")


def _cat(state: Any, dtype: torch.dtype, width: int | None = None) -> Tensor:
    """A list state (or its synced tensor) -> one tensor; empty lists give an empty tensor."""
    if isinstance(state, list) and len(state) == 0:
        return torch.zeros((0, width) if width else (0,), dtype=dtype)
    return dim_zero_cat(state).to(dtype)


class DetectionMAP(Metric):
    """COCO mAP/mAR of detections, exact to pycocotools.

    Args:
        box_format: format of ``boxes`` in ``update`` inputs; detforge's own is ``"xyxy"`` (pixels).
        iou_thresholds (list[float] | None): default 0.50:0.05:0.95.
        rec_thresholds (list[float] | None): default 0:0.01:1.
        max_detection_thresholds (list[int] | None): three values, default [1, 10, 100]; per image and class.
        class_metrics (bool): also return ``map_per_class`` and ``mar_{max}_per_class``.

    ``update(preds, targets)``: per image, ``preds`` dicts hold ``boxes`` (Tensor[K, 4]), ``scores``
    (Tensor[K]), ``labels`` (Tensor[K] int); ``targets`` dicts hold ``boxes`` (Tensor[N, 4]), ``labels``
    (Tensor[N]) and optionally ``iscrowd`` (Tensor[N]), ``area`` (Tensor[N]; <= 0 means "use the box area")
    and ``ignore`` (Tensor[N] bool: not counted, like a non-crowd COCO ``ignore``). Labels are used as given.

    ``compute()`` returns ``map, map_50, map_75, map_small, map_medium, map_large, mar_{m1}, mar_{m2},
    mar_{m3}, mar_small, mar_medium, mar_large, map_per_class, mar_{m3}_per_class, classes`` (float32
    tensors; -1 where undefined), as torchmetrics does. ``last_result`` keeps the full ``COCOEvalResult``,
    ``last_inputs`` the evaluated detections and ground truth (:class:`~detforge.metrics.confusion.MatchInputs`,
    all ranks) for :meth:`summary`.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        box_format: BoxFormat = "xyxy",
        iou_thresholds: Sequence[float] | None = None,
        rec_thresholds: Sequence[float] | None = None,
        max_detection_thresholds: Sequence[int] | None = None,
        class_metrics: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if box_format not in _BOX_FORMATS:
            raise ValueError(f"box_format must be one of {_BOX_FORMATS}, got {box_format!r}")
        max_dets = sorted(int(m) for m in (max_detection_thresholds or (1, 10, 100)))
        if len(max_dets) != 3:
            raise ValueError(f"max_detection_thresholds must hold 3 values, got {max_detection_thresholds!r}")
        self.box_format = box_format
        self.class_metrics = bool(class_metrics)
        self.evaluator = COCOEvaluator(
            iou_thresholds=iou_thresholds, recall_thresholds=rec_thresholds, max_detections=max_dets
        )
        self.max_detection_thresholds = max_dets
        self.last_result: COCOEvalResult | None = None
        self.last_inputs: MatchInputs | None = None
        for name in ("det_boxes", "det_scores", "det_labels", "det_counts"):
            self.add_state(name, default=[], dist_reduce_fx="cat")
        for name in ("gt_boxes", "gt_labels", "gt_crowd", "gt_area", "gt_ignore", "gt_counts"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def _xyxy(self, boxes: Tensor, where: str) -> Tensor:
        boxes = torch.as_tensor(boxes)
        if boxes.ndim != 2 or boxes.shape[-1] != 4:
            if boxes.numel() == 0:
                return boxes.reshape(0, 4).float()
            raise ValueError(f"{where}: boxes must be Tensor[N, 4], got shape {tuple(boxes.shape)}")
        if self.box_format != "xyxy":
            boxes = convert_boxes(boxes.double(), self.box_format, "xyxy")
        return boxes

    def update(self, preds: Sequence[dict[str, Tensor]], target: Sequence[dict[str, Tensor]]) -> None:
        """Add one batch: ``preds`` and ``target`` are per-image dicts, same length."""
        if len(preds) != len(target):
            raise ValueError(f"got {len(preds)} predictions for {len(target)} targets")
        for i, (p, t) in enumerate(zip(preds, target)):
            for key in ("boxes", "scores", "labels"):
                if key not in p:
                    raise ValueError(f"prediction {i} has no {key!r} (keys: {sorted(p)})")
            for key in ("boxes", "labels"):
                if key not in t:
                    raise ValueError(f"target {i} has no {key!r} (keys: {sorted(t)})")
            boxes = self._xyxy(p["boxes"], f"prediction {i}")
            scores, labels = (
                torch.as_tensor(p["scores"]).reshape(-1),
                torch.as_tensor(p["labels"]).reshape(-1),
            )
            if not len(boxes) == len(scores) == len(labels):
                raise ValueError(
                    f"prediction {i}: {len(boxes)} boxes, {len(scores)} scores, {len(labels)} labels"
                )
            self.det_boxes.append(boxes.detach())
            self.det_scores.append(scores.detach())
            self.det_labels.append(labels.detach().long())
            self.det_counts.append(torch.tensor([len(boxes)], device=self.device))
            gt_boxes, gt_labels = (
                self._xyxy(t["boxes"], f"target {i}"),
                torch.as_tensor(t["labels"]).reshape(-1),
            )
            n = len(gt_boxes)
            if len(gt_labels) != n:
                raise ValueError(f"target {i}: {n} boxes, {len(gt_labels)} labels")
            zeros = torch.zeros(n, device=gt_boxes.device)
            self.gt_boxes.append(gt_boxes.detach())
            self.gt_labels.append(gt_labels.detach().long())
            self.gt_crowd.append(torch.as_tensor(t.get("iscrowd", zeros)).reshape(-1).bool())
            self.gt_area.append(torch.as_tensor(t.get("area", zeros)).reshape(-1).detach())
            self.gt_ignore.append(torch.as_tensor(t.get("ignore", zeros)).reshape(-1).bool())
            self.gt_counts.append(torch.tensor([n], device=self.device))

    def evaluate(self) -> COCOEvalResult:
        """Run the evaluation on everything added so far (all ranks after sync) and return the full result."""
        det_counts = _cat(self.det_counts, torch.int64).cpu().numpy()
        gt_counts = _cat(self.gt_counts, torch.int64).cpu().numpy()
        num_images = len(det_counts)
        d_boxes = _cat(self.det_boxes, torch.float64, 4).cpu().numpy().reshape(-1, 4)  # [D, 4] xyxy
        g_boxes = _cat(self.gt_boxes, torch.float64, 4).cpu().numpy().reshape(-1, 4)  # [G, 4] xyxy
        d_labels = _cat(self.det_labels, torch.int64).cpu().numpy()
        g_labels = _cat(self.gt_labels, torch.int64).cpu().numpy()
        g_xywh = convert_boxes(g_boxes, "xyxy", "xywh")  # [G, 4] float64
        area = _cat(self.gt_area, torch.float64).cpu().numpy()
        area = np.where(area > 0, area, g_xywh[:, 2] * g_xywh[:, 3])
        crowd = _cat(self.gt_crowd, torch.bool).cpu().numpy()
        classes = np.unique(np.concatenate([d_labels, g_labels]))
        gt = CocoGroundTruth(
            image_ids=np.repeat(np.arange(num_images), gt_counts),
            category_ids=g_labels,
            boxes=g_xywh,
            areas=area,
            iscrowd=crowd,
            ignore=crowd | _cat(self.gt_ignore, torch.bool).cpu().numpy(),
            ann_ids=np.arange(1, len(g_labels) + 1),
            all_image_ids=np.arange(num_images),
            all_category_ids=classes,
            category_names={},
        )
        dt = CocoDetections(
            image_ids=np.repeat(np.arange(num_images), det_counts),
            category_ids=d_labels,
            boxes=convert_boxes(d_boxes, "xyxy", "xywh"),  # [D, 4] float64
            scores=_cat(self.det_scores, torch.float64).cpu().numpy(),
        )
        return self.evaluator.evaluate(gt, dt)

    def match_inputs(self) -> MatchInputs:
        """Everything added so far (all ranks after sync) as :class:`~detforge.metrics.confusion.MatchInputs`."""
        return MatchInputs.from_counts(
            det_boxes=_cat(self.det_boxes, torch.float64, 4),
            det_scores=_cat(self.det_scores, torch.float64),
            det_labels=_cat(self.det_labels, torch.int64),
            det_counts=_cat(self.det_counts, torch.int64),
            gt_boxes=_cat(self.gt_boxes, torch.float64, 4),
            gt_labels=_cat(self.gt_labels, torch.int64),
            gt_counts=_cat(self.gt_counts, torch.int64),
            gt_crowd=_cat(self.gt_crowd, torch.bool),
            gt_ignore=_cat(self.gt_ignore, torch.bool),
        )

    def summary(self, num_classes: int | None = None, iou_threshold: float = 0.5) -> DetectionSummary:
        """F1-confidence curves, the F1-best confidence and the confusion matrix at it, of the detections of
        the last :meth:`compute` (:func:`detforge.metrics.f1.summarize`). ``num_classes``: C of the per-class
        arrays and of the matrix; None: one more than the largest label."""
        if self.last_inputs is None:
            raise RuntimeError("DetectionMAP.summary() needs a compute() first")
        return summarize(self.last_inputs, num_classes, iou_threshold)

    def compute(self) -> dict[str, Tensor]:
        result = self.evaluate()
        self.last_result = result
        self.last_inputs = self.match_inputs()
        m1, m2, m3 = self.max_detection_thresholds
        names = ["map", "map_50", "map_75", "map_small", "map_medium", "map_large"]
        names += [f"mar_{m1}", f"mar_{m2}", f"mar_{m3}", "mar_small", "mar_medium", "mar_large"]
        out = {k: torch.tensor(float(v), dtype=torch.float32) for k, v in zip(names, result.stats)}
        if self.class_metrics:
            out["map_per_class"] = torch.tensor(list(result.per_class_ap.values()), dtype=torch.float32)
            out[f"mar_{m3}_per_class"] = torch.tensor(list(result.per_class_ar.values()), dtype=torch.float32)
        else:
            out["map_per_class"] = torch.tensor(-1.0)
            out[f"mar_{m3}_per_class"] = torch.tensor(-1.0)
        out["classes"] = torch.as_tensor(result.category_ids, dtype=torch.int32)
        return out
