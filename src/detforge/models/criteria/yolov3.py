"""YOLOv3 criterion (Redmon & Farhadi 2018): best-anchor assignment (:class:`YOLOv3Assigner`), objectness
BCE with the ignore rule, independent sigmoid classes (BCE), and a box loss on the assigned predictions.

Box loss (``reg_loss``):

- ``"giou"`` (the default, as modern ports such as ultralytics' YOLOv3 do) or another IoU-family loss on the
  decoded xyxy boxes;
- ``"mse"``: the original darknet loss, squared error of ``sigmoid(t_xy)`` against the centre's offset in
  its cell and of ``t_wh`` against ``log(size / anchor)``, scaled by ``2 - w * h`` (box size as a fraction
  of the image), so small boxes weigh more.

Every part is summed and divided by the number of assigned predictions averaged over DDP ranks (at least 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import torch
from torch import Tensor, nn

from detforge.assigners.yolov3 import YOLOv3Assigner
from detforge.boxes import anchor_grid, xyxy_to_yolo
from detforge.losses import get_loss
from detforge.models.criteria.common import check_labels, loss_dict, positives_normaliser

__all__ = ["YOLOv3BoxLoss", "YOLOv3Criterion"]

YOLOv3BoxLoss = Literal["giou", "diou", "ciou", "iou", "mse"]
"""Box losses of :class:`YOLOv3Criterion`: IoU-family on decoded boxes, or darknet's ``mse`` on the t's."""


class YOLOv3Criterion(nn.Module):
    """YOLOv3 losses of a whole batch; holds loss hyper-parameters only (no parameters, no buffers).

    Args:
        strides: stride of each level in pixels.
        ignore_thresh: unassigned predictions with IoU above this with a ground truth get no objectness loss.
        multi_anchor_thresh: None (each ground truth on its best anchor only) or a shape IoU: also on every
            anchor above it (:class:`~detforge.assigners.yolov3.YOLOv3Assigner`).
        reg_loss: see :data:`YOLOv3BoxLoss` and the module docstring.
        cls_weight, reg_weight, obj_weight: weights of the parts in ``loss``.
    """

    def __init__(
        self,
        strides: Sequence[int],
        ignore_thresh: float = 0.5,
        multi_anchor_thresh: float | None = None,
        reg_loss: YOLOv3BoxLoss = "giou",
        cls_weight: float = 1.0,
        reg_weight: float = 5.0,
        obj_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if reg_loss not in get_args(YOLOv3BoxLoss):
            raise ValueError(f"reg_loss_fn must be one of {get_args(YOLOv3BoxLoss)}, got {reg_loss!r}")
        self.strides = tuple(int(s) for s in strides)
        self.assigner = YOLOv3Assigner(ignore_thresh, multi_anchor_thresh)
        self.reg_loss = reg_loss
        self.reg_loss_fn = None if reg_loss == "mse" else get_loss(reg_loss, reduction="sum")
        self.bce = get_loss("bce", reduction="sum")
        self.cls_weight = float(cls_weight)
        self.reg_weight = float(reg_weight)
        self.obj_weight = float(obj_weight)

    def forward(
        self,
        cls_logits: Tensor,
        box_t: Tensor,
        boxes: Tensor,
        obj_logits: Tensor,
        feat_sizes: Sequence[tuple[int, int]],
        anchors: Tensor,
        gt_boxes: Tensor,
        gt_labels: Tensor,
        gt_mask: Tensor,
    ) -> dict[str, Tensor]:
        """Losses of a batch.

        Args:
            cls_logits: Tensor[B, P, C]; box_t: Tensor[B, P, 4] raw ``(tx, ty, tw, th)``; boxes: Tensor[B, P, 4]
                the same decoded to xyxy pixels; obj_logits: Tensor[B, P]. P slots in
                :func:`~detforge.boxes.anchor_grid` order.
            feat_sizes: (H, W) of each level; anchors: Tensor[L * A, 2] anchor sizes in pixels.
            gt_boxes: Tensor[B, G, 4] xyxy pixels, gt_labels: Tensor[B, G] int64, gt_mask: Tensor[B, G] bool.

        Returns:
            ``loss``, detached ``cls_loss``, ``reg_loss``, ``obj_loss`` and ``num_pos`` (this rank's).
        """
        num_classes = cls_logits.shape[-1]
        check_labels(gt_labels, gt_mask, num_classes)
        assigned = self.assigner(
            boxes.detach(), feat_sizes, self.strides, anchors, gt_boxes, gt_labels, gt_mask
        )
        pos = assigned.labels >= 0  # [B, P]
        num_pos = positives_normaliser(pos.sum())

        obj_target = pos.to(obj_logits.dtype)  # [B, P]
        obj_weight = (~assigned.ignore).to(obj_logits.dtype)  # [B, P]: ignored slots count for nothing
        obj_loss = self.bce(obj_logits, obj_target, obj_weight) / num_pos

        pos_target = nn.functional.one_hot(assigned.labels[pos], num_classes).to(cls_logits.dtype)  # [M, C]
        cls_loss = self.bce(cls_logits[pos], pos_target) / num_pos

        image_of = pos.nonzero()[:, 0]  # [M]
        target_boxes = gt_boxes[image_of, assigned.matched_gt[pos]]  # [M, 4]
        if self.reg_loss_fn is not None:
            reg_loss = self.reg_loss_fn(boxes[pos].float(), target_boxes) / num_pos
        else:
            corners, point_strides, anchor_sizes = anchor_grid(feat_sizes, self.strides, anchors.float())
            slot = pos.nonzero()[:, 1]  # [M]
            target_t = xyxy_to_yolo(corners[slot], point_strides[slot], anchor_sizes[slot], target_boxes)
            h, w = feat_sizes[0]
            image_area = float(h * self.strides[0] * w * self.strides[0])
            wh = (target_boxes[:, 2:] - target_boxes[:, :2]).clamp(min=0)  # [M, 2]
            scale = 2.0 - wh[:, 0] * wh[:, 1] / image_area  # [M]
            pred = torch.cat([box_t[pos][:, :2].sigmoid(), box_t[pos][:, 2:]], dim=-1).float()  # [M, 4]
            reg_loss = (scale[:, None] * (pred - target_t) ** 2).sum() / num_pos

        return loss_dict(
            {
                "cls_loss": (self.cls_weight, cls_loss),
                "reg_loss": (self.reg_weight, reg_loss),
                "obj_loss": (self.obj_weight, obj_loss),
            },
            pos.sum(),
        )
