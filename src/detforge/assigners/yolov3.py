"""YOLOv3 assignment (Redmon & Farhadi 2018), batched over images, parameter-free.

1. Each ground truth goes to the one anchor (of all levels' anchors, nine by default) whose size has the
   highest IoU with the box's size (both centred on one point: :func:`detforge.anchors.shape_iou`); ties go
   to the first anchor.
2. On that anchor's level it is placed at the cell holding its centre, ``floor(c / stride)`` clamped to the
   map; the prediction slot is (level, row, column, anchor).
3. Two ground truths on one slot: the later one (higher index in the image's list) keeps it, as in darknet,
   where the later box overwrites the earlier one's targets.
4. Predictions not assigned whose decoded box has IoU above ``ignore_thresh`` with any ground truth of the
   image are ignored: no objectness loss (neither positive nor negative).

Slots are ordered as :func:`detforge.boxes.anchor_grid` orders them: levels concatenated, row-major inside a
level, the anchors of a cell consecutive.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from detforge.anchors import shape_iou
from detforge.assigners.simota import batched_box_iou

__all__ = ["YOLOv3Assigner", "YOLOv3Assignment"]


class YOLOv3Assignment(NamedTuple):
    """Per prediction slot; P = sum over levels of H * W * anchors per level."""

    labels: Tensor  # [B, P] int64 class of the assigned ground truth, -1 = not assigned
    matched_gt: Tensor  # [B, P] int64 index into the G axis of gt_boxes, -1 = not assigned
    ignore: Tensor  # [B, P] bool: not assigned but IoU > ignore_thresh with a ground truth


class YOLOv3Assigner:
    """YOLOv3's best-anchor, centre-cell assigner (no parameters, no grad, whole batch at once).

    Args:
        ignore_thresh: predictions overlapping a ground truth by more than this IoU get no objectness loss.
    """

    def __init__(self, ignore_thresh: float = 0.5) -> None:
        if not 0.0 < ignore_thresh <= 1.0:
            raise ValueError(f"ignore_thresh must be in (0, 1], got {ignore_thresh}")
        self.ignore_thresh = float(ignore_thresh)

    def __repr__(self) -> str:
        return f"YOLOv3Assigner(ignore_thresh={self.ignore_thresh})"

    def __call__(self, *args, **kwargs) -> YOLOv3Assignment:
        return self.assign(*args, **kwargs)

    @torch.no_grad()
    def assign(
        self,
        pred_boxes: Tensor,
        feat_sizes: Sequence[tuple[int, int]],
        strides: Sequence[int],
        anchors: Tensor,
        gt_boxes: Tensor,
        gt_labels: Tensor,
        gt_mask: Tensor,
    ) -> YOLOv3Assignment:
        """Assign a batch.

        Args:
            pred_boxes: Tensor[B, P, 4] decoded predictions, xyxy pixels (for the ignore rule).
            feat_sizes: (H, W) of each level; strides: each level's stride in pixels.
            anchors: Tensor[L * A, 2] anchor (w, h) pixels, A per level, level by level.
            gt_boxes: Tensor[B, G, 4] xyxy pixels; gt_labels: Tensor[B, G] int64; gt_mask: Tensor[B, G] bool.
        """
        num_images, num_preds = pred_boxes.shape[:2]
        device = pred_boxes.device
        num_levels = len(feat_sizes)
        per_level = anchors.shape[0] // num_levels
        counts = [int(h) * int(w) * per_level for h, w in feat_sizes]
        if sum(counts) != num_preds:
            raise ValueError(f"pred_boxes has {num_preds} slots, the feature sizes give {sum(counts)}")
        labels = torch.full((num_images, num_preds), -1, dtype=torch.int64, device=device)  # [B, P]
        num_gt = gt_boxes.shape[1]
        if num_gt == 0:
            return YOLOv3Assignment(labels, labels.clone(), torch.zeros_like(labels, dtype=torch.bool))
        gt_boxes, gt_mask = gt_boxes.float(), gt_mask.bool()

        # 1. best anchor by shape IoU, [B, G]
        wh = (gt_boxes[..., 2:] - gt_boxes[..., :2]).clamp(min=0)  # [B, G, 2]
        best = shape_iou(wh.reshape(-1, 2), anchors.float()).argmax(1).reshape(num_images, num_gt)  # [B, G]
        level, k = best // per_level, best % per_level  # [B, G] each

        # 2. centre cell on that level
        level_h = torch.tensor([h for h, _ in feat_sizes], device=device)[level]  # [B, G]
        level_w = torch.tensor([w for _, w in feat_sizes], device=device)[level]  # [B, G]
        stride = torch.tensor([float(s) for s in strides], device=device)[level]  # [B, G]
        offset = torch.tensor([0, *counts[:-1]], device=device).cumsum(0)[level]  # [B, G]
        centre = (gt_boxes[..., :2] + gt_boxes[..., 2:]) * 0.5  # [B, G, 2]
        col = torch.minimum(torch.floor(centre[..., 0] / stride).long().clamp(min=0), level_w - 1)  # [B, G]
        row = torch.minimum(torch.floor(centre[..., 1] / stride).long().clamp(min=0), level_h - 1)  # [B, G]
        slot = offset + (row * level_w + col) * per_level + k  # [B, G]

        # 3. one ground truth per slot: the highest index (padding goes to a spare column P)
        slot = torch.where(gt_mask, slot, torch.full_like(slot, num_preds))
        gt_index = torch.arange(num_gt, device=device).expand(num_images, num_gt)  # [B, G]
        owner = torch.full((num_images, num_preds + 1), -1, dtype=torch.int64, device=device)
        owner.scatter_reduce_(1, slot, gt_index, reduce="amax", include_self=True)
        matched_gt = owner[:, :num_preds]  # [B, P]
        pos = matched_gt >= 0
        labels = torch.where(pos, gt_labels.gather(1, matched_gt.clamp(min=0)), labels)

        # 4. ignore unassigned predictions that overlap a ground truth enough
        ious = batched_box_iou(pred_boxes.float(), gt_boxes)  # [B, P, G]
        ious = torch.where(gt_mask[:, None, :], ious.nan_to_num(0.0), torch.zeros((), device=device))
        ignore = (ious.max(2).values > self.ignore_thresh) & ~pos  # [B, P]
        return YOLOv3Assignment(labels, matched_gt, ignore)
