"""YOLOv3 assignment (Redmon & Farhadi 2018), batched over images, parameter-free.

1. Each ground truth goes to the one anchor (of all levels' anchors, nine by default) whose size has the
   highest IoU with the box's size (both centred on one point: :func:`detforge.anchors.shape_iou`); ties go
   to the first anchor. With ``multi_anchor_thresh`` set, it also goes to every other anchor whose shape IoU
   with the box is above that threshold (the ``iou_t`` rule of ultralytics' YOLOv3 port, 0.2 there): more
   positives per object, the usual remedy for YOLOv3's slow start on small budgets.
2. On each chosen anchor's level it is placed at the cell holding its centre, ``floor(c / stride)`` clamped to the
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
        multi_anchor_thresh: None (the paper: the best anchor only), or a shape IoU in (0, 1): a ground truth
            also goes to every anchor above it (each at the centre cell of its own level).
    """

    def __init__(self, ignore_thresh: float = 0.5, multi_anchor_thresh: float | None = None) -> None:
        if not 0.0 < ignore_thresh <= 1.0:
            raise ValueError(f"ignore_thresh must be in (0, 1], got {ignore_thresh}")
        if multi_anchor_thresh is not None and not 0.0 < multi_anchor_thresh < 1.0:
            raise ValueError(f"multi_anchor_thresh must be None or in (0, 1), got {multi_anchor_thresh}")
        self.ignore_thresh = float(ignore_thresh)
        self.multi_anchor_thresh = None if multi_anchor_thresh is None else float(multi_anchor_thresh)

    def __repr__(self) -> str:
        return (
            f"YOLOv3Assigner(ignore_thresh={self.ignore_thresh}, multi_anchor_thresh={self.multi_anchor_thresh})"
        )

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

        # 1. the best anchor by shape IoU, and with multi_anchor_thresh every anchor above it: [B, G, K]
        num_anchors = anchors.shape[0]
        wh = (gt_boxes[..., 2:] - gt_boxes[..., :2]).clamp(min=0)  # [B, G, 2]
        fit = shape_iou(wh.reshape(-1, 2), anchors.float()).reshape(num_images, num_gt, num_anchors)  # [B, G, K]
        anchor_id = torch.arange(num_anchors, device=device)  # [K]
        chosen = anchor_id == fit.argmax(2, keepdim=True)  # [B, G, K]
        if self.multi_anchor_thresh is not None:
            chosen |= fit > self.multi_anchor_thresh
        level, k = anchor_id // per_level, anchor_id % per_level  # [K] each

        # 2. the centre cell on each anchor's level: slot [B, G, K]
        level_h = torch.tensor([h for h, _ in feat_sizes], device=device)[level]  # [K]
        level_w = torch.tensor([w for _, w in feat_sizes], device=device)[level]  # [K]
        stride = torch.tensor([float(s) for s in strides], device=device)[level]  # [K]
        offset = torch.tensor([0, *counts[:-1]], device=device).cumsum(0)[level]  # [K]
        centre = (gt_boxes[..., :2] + gt_boxes[..., 2:]) * 0.5  # [B, G, 2]
        col = torch.floor(centre[..., None, 0] / stride).long().clamp(min=0)  # [B, G, K]
        row = torch.floor(centre[..., None, 1] / stride).long().clamp(min=0)  # [B, G, K]
        col, row = torch.minimum(col, level_w - 1), torch.minimum(row, level_h - 1)
        slot = offset + (row * level_w + col) * per_level + k  # [B, G, K]

        # 3. one ground truth per slot: the highest index (padding and unchosen anchors go to a spare column P)
        slot = torch.where(gt_mask[..., None] & chosen, slot, torch.full_like(slot, num_preds))
        gt_index = torch.arange(num_gt, device=device)[:, None].expand(num_images, num_gt, num_anchors)
        owner = torch.full((num_images, num_preds + 1), -1, dtype=torch.int64, device=device)
        owner.scatter_reduce_(
            1, slot.reshape(num_images, -1), gt_index.reshape(num_images, -1), reduce="amax", include_self=True
        )
        matched_gt = owner[:, :num_preds]  # [B, P]
        pos = matched_gt >= 0
        labels = torch.where(pos, gt_labels.gather(1, matched_gt.clamp(min=0)), labels)

        # 4. ignore unassigned predictions that overlap a ground truth enough
        ious = batched_box_iou(pred_boxes.float(), gt_boxes)  # [B, P, G]
        ious = torch.where(gt_mask[:, None, :], ious.nan_to_num(0.0), torch.zeros((), device=device))
        ignore = (ious.max(2).values > self.ignore_thresh) & ~pos  # [B, P]
        return YOLOv3Assignment(labels, matched_gt, ignore)
