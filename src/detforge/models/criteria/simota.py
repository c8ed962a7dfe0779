"""YOLOX criterion (Ge et al. 2021): SimOTA assignment, objectness BCE, class BCE against IoU-weighted
one-hot targets, IoU-family loss on the decoded boxes.

Used by :class:`detforge.models.yolox.YOLOX` and :class:`detforge.models.edge.nightvision.NightVision`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import get_args

import torch
from torch import Tensor, nn

from detforge.assigners.simota import SimOTAAssigner
from detforge.boxes import grid_points
from detforge.losses import get_loss
from detforge.models.criteria.common import check_labels, loss_dict, positives_normaliser
from detforge.models.criteria.fcos import IoULossName

__all__ = ["YOLOXCriterion"]


class YOLOXCriterion(nn.Module):
    """YOLOX losses of a whole batch; holds loss hyper-parameters only (no parameters, no buffers).

    Every part is divided by the number of SimOTA positives averaged over DDP ranks (at least 1).

    Args:
        strides: stride of each level in pixels.
        center_radius, candidate_topk: SimOTA's centre prior (in strides) and dynamic-k candidates.
        cls_loss: "bce" or another registered loss name, or a module called as
            ``fn(logits [N, C], soft_targets [N, C]) -> summed loss``; targets are one-hot times the IoU.
        reg_loss: "iou", "giou", "diou" or "ciou" (xyxy), or a module called as
            ``fn(pred [N, 4], target [N, 4]) -> summed loss``.
        cls_weight, reg_weight, obj_weight: weights of the parts in ``loss`` (YOLOX and NightVision: 1, 5, 1).
    """

    def __init__(
        self,
        strides: Sequence[int],
        center_radius: float = 2.5,
        candidate_topk: int = 10,
        cls_loss: str | nn.Module = "bce",
        reg_loss: IoULossName | nn.Module = "giou",
        cls_weight: float = 1.0,
        reg_weight: float = 5.0,
        obj_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.strides = tuple(int(s) for s in strides)
        self.assigner = SimOTAAssigner(center_radius=center_radius, candidate_topk=candidate_topk)
        if isinstance(cls_loss, str):
            cls_loss = get_loss(cls_loss, reduction="sum")
        if isinstance(reg_loss, str):
            if reg_loss not in get_args(IoULossName):
                raise ValueError(
                    f"reg_loss must be one of {get_args(IoULossName)} or a module, got {reg_loss!r}"
                )
            reg_loss = get_loss(reg_loss, reduction="sum")
        self.cls_loss_fn = cls_loss
        self.reg_loss_fn = reg_loss
        self.obj_loss_fn = get_loss("bce", reduction="sum")
        self.cls_weight = float(cls_weight)
        self.reg_weight = float(reg_weight)
        self.obj_weight = float(obj_weight)
        if next(self.parameters(), None) is not None:
            raise ValueError("YOLOXCriterion holds no parameters: pass parameter-free loss modules")

    def forward(
        self,
        cls_logits: Tensor,
        boxes: Tensor,
        obj_logits: Tensor,
        feat_sizes: Sequence[tuple[int, int]],
        gt_boxes: Tensor,
        gt_labels: Tensor,
        gt_mask: Tensor,
    ) -> dict[str, Tensor]:
        """Losses of a batch.

        Args:
            cls_logits: Tensor[B, A, C] class logits, A locations of all levels, row-major inside a level.
            boxes: Tensor[B, A, 4] decoded xyxy pixels.
            obj_logits: Tensor[B, A] objectness logits.
            feat_sizes: (H, W) of each level.
            gt_boxes: Tensor[B, G, 4] xyxy pixels, gt_labels: Tensor[B, G] int64, gt_mask: Tensor[B, G] bool
                (:func:`detforge.targets.pad_targets`).

        Returns:
            ``loss`` (the weighted total), detached unweighted ``cls_loss``, ``reg_loss``, ``obj_loss``, and
            ``num_pos`` (this rank's positives).
        """
        num_classes = cls_logits.shape[-1]
        check_labels(gt_labels, gt_mask, num_classes)
        points, point_strides = grid_points(feat_sizes, self.strides, device=cls_logits.device)  # [A, 2], [A]
        with torch.no_grad():
            scores = cls_logits.detach().float().sigmoid() * obj_logits.detach().float().sigmoid()[..., None]
        assigned = self.assigner(
            scores, boxes.detach().float(), points, point_strides, gt_boxes, gt_labels, gt_mask
        )
        fg = assigned.fg_mask  # [B, A]
        num_fg = positives_normaliser(fg.sum())

        obj_loss = self.obj_loss_fn(obj_logits, fg.to(obj_logits.dtype)) / num_fg
        soft = nn.functional.one_hot(assigned.labels[fg], num_classes).to(cls_logits.dtype)  # [M, C]
        soft = soft * assigned.matched_iou[fg].to(cls_logits.dtype)[:, None]
        cls_loss = self.cls_loss_fn(cls_logits[fg], soft) / num_fg
        image_of = fg.nonzero(as_tuple=True)[0]  # [M]
        matched = gt_boxes[image_of, assigned.matched_gt[fg]]  # [M, 4]
        reg_loss = self.reg_loss_fn(boxes[fg], matched) / num_fg

        return loss_dict(
            {
                "cls_loss": (self.cls_weight, cls_loss),
                "reg_loss": (self.reg_weight, reg_loss),
                "obj_loss": (self.obj_weight, obj_loss),
            },
            fg.sum(),
        )
