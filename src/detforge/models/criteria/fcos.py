"""FCOS criterion (Tian et al. 2019): FCOS assignment, focal / quality-focal classification, IoU-family box
loss weighted by the centerness targets, centerness BCE, and optionally a Gaussian NLL of the box sides with a
predicted log-variance (Nexus).

Used by :class:`detforge.models.fcos.FCOS` and :class:`detforge.models.edge.nexus.Nexus`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, get_args

import torch
from torch import Tensor, nn

from detforge.assigners.fcos import FCOSAssigner
from detforge.boxes import grid_points, ltrb_to_origin_xyxy
from detforge.losses import get_loss
from detforge.losses.iou import paired_box_iou
from detforge.losses.quality_focal import QualityFocalLoss
from detforge.losses.uncertainty import UncertaintyLoss
from detforge.models.criteria.common import check_labels, mean_over_ranks, positives_normaliser

__all__ = ["FCOSCriterion", "IoULossName", "LossConvention", "default_regress_ranges"]

IoULossName = Literal["iou", "giou", "diou", "ciou"]
"""The IoU-family box losses (registered in :mod:`detforge.losses`)."""

LossConvention = Literal["fcos", "torchvision"]
"""``fcos``: FCOS's assignment, box loss weighted by the centerness targets and divided by their sum, parts
named ``cls_loss`` / ``reg_loss`` / ``centerness_loss``. ``torchvision``: torchvision's ``FCOS.compute_loss``:
its matching (:class:`~detforge.assigners.fcos.FCOSAssigner` ``rule="torchvision"``), the box loss unweighted
and divided by the positives, parts named ``classification`` / ``bbox_regression`` / ``bbox_ctrness``."""

_PART_NAMES = {
    "fcos": ("cls_loss", "reg_loss", "centerness_loss"),
    "torchvision": ("classification", "bbox_regression", "bbox_ctrness"),
}


def default_regress_ranges(strides: Sequence[int]) -> tuple[tuple[float, float], ...]:
    """FCOS's size ranges for any strides: level ``l`` takes boxes whose largest distance lies in
    ``(8 * s_{l-1}, 8 * s_l]``; the first starts at -1, the last is open. P3-P7 gives FCOS's
    ``(-1, 64), (64, 128), (128, 256), (256, 512), (512, inf)``."""
    bounds = [-1.0] + [8.0 * s for s in strides[:-1]] + [math.inf]
    return tuple(zip(bounds[:-1], bounds[1:]))


class FCOSCriterion(nn.Module):
    """FCOS losses of a whole batch; holds loss hyper-parameters only (no parameters, no buffers).

    The classification, centerness and uncertainty losses are divided by the number of positives, the box loss
    by the sum of the positives' centerness targets (``convention="torchvision"``: unweighted, by the number of
    positives); both normalisers are averaged over DDP ranks, so every rank's gradient has the same scale
    whatever its share of the positives.

    Args:
        strides: stride of each level in pixels.
        regress_ranges: box size range per level; None gives :func:`default_regress_ranges` of the strides.
        center_sampling_radius: positives within ``radius * stride`` of the box centre (None: whole box).
        cls_loss: "focal", "quality_focal" (IoU-aware targets, GFL; ``focal_gamma`` is its beta), another
            registered loss name, or a module called as ``fn(logits [N, C], targets [N, C]) -> summed loss``.
        reg_loss: "iou", "giou", "diou" or "ciou" (on the ``(l, t, r, b)`` distances), or a module called as
            ``fn(pred_ltrb [N, 4], target_ltrb [N, 4], weight [N]) -> summed weighted loss``.
        focal_alpha, focal_gamma: parameters of the focal (gamma: quality-focal beta) classification loss.
        cls_weight, reg_weight, centerness_weight: weights of the parts in ``loss``.
        uncertainty_weight: weight of the Gaussian NLL of the box sides in log-stride units under the
            predicted log-variance (Nexus: 0.5); 0 leaves it out and ``box_log_var`` is not needed.
        point_offset: the assigner's location points, ``(fx + offset) * stride``: 0.5 cell centres, 0
            torchvision's anchor centres.
        convention: "fcos" or "torchvision" (:data:`LossConvention`).
    """

    def __init__(
        self,
        strides: Sequence[int],
        regress_ranges: Sequence[tuple[float, float]] | None = None,
        center_sampling_radius: float | None = 1.5,
        cls_loss: str | nn.Module = "focal",
        reg_loss: IoULossName | nn.Module = "giou",
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        cls_weight: float = 1.0,
        reg_weight: float = 1.0,
        centerness_weight: float = 1.0,
        uncertainty_weight: float = 0.0,
        point_offset: float = 0.5,
        convention: LossConvention = "fcos",
    ) -> None:
        super().__init__()
        if convention not in get_args(LossConvention):
            raise ValueError(f"convention must be one of {get_args(LossConvention)}, got {convention!r}")
        self.convention = convention
        self.strides = tuple(int(s) for s in strides)
        if regress_ranges is None:
            regress_ranges = default_regress_ranges(self.strides)
        self.assigner = FCOSAssigner(
            self.strides, regress_ranges, center_sampling_radius, point_offset=point_offset, rule=convention
        )
        # Quality focal loss (GFL) learns IoU-aware scores: the true class's target is the IoU of the box.
        self.cls_quality = cls_loss == "quality_focal" or isinstance(cls_loss, QualityFocalLoss)
        if isinstance(cls_loss, str):
            kw: dict = {}
            if cls_loss == "focal":
                kw = dict(alpha=focal_alpha, gamma=focal_gamma)
            elif cls_loss == "quality_focal":
                kw = dict(beta=focal_gamma)
            cls_loss = get_loss(cls_loss, reduction="sum", **kw)
        if isinstance(reg_loss, str):
            if reg_loss not in get_args(IoULossName):
                raise ValueError(
                    f"reg_loss must be one of {get_args(IoULossName)} or a module, got {reg_loss!r}"
                )
            reg_loss = get_loss(reg_loss, box_format="ltrb", reduction="sum")
        if uncertainty_weight < 0:
            raise ValueError(f"uncertainty_weight must be >= 0, got {uncertainty_weight}")
        self.cls_loss_fn = cls_loss
        self.reg_loss_fn = reg_loss
        self.centerness_loss_fn = get_loss("bce", reduction="sum")
        self.uncertainty_loss_fn = UncertaintyLoss(reduction="sum")
        self.cls_weight = float(cls_weight)
        self.reg_weight = float(reg_weight)
        self.centerness_weight = float(centerness_weight)
        self.uncertainty_weight = float(uncertainty_weight)
        if next(self.parameters(), None) is not None:
            raise ValueError("FCOSCriterion holds no parameters: pass parameter-free loss modules")

    def forward(
        self,
        cls_logits: Tensor,
        box_reg: Tensor,
        centerness: Tensor,
        feat_sizes: Sequence[tuple[int, int]],
        gt_boxes: Tensor,
        gt_labels: Tensor,
        gt_mask: Tensor,
        box_log_var: Tensor | None = None,
        point_strides: Sequence[tuple[int, int]] | None = None,
    ) -> dict[str, Tensor]:
        """Losses of a batch.

        Args:
            cls_logits: Tensor[B, P, C] class logits, P locations of all levels (the assigner's order).
            box_reg: Tensor[B, P, 4] predicted distances ``(l, t, r, b)`` in pixels.
            centerness: Tensor[B, P] centerness logits.
            feat_sizes: (H, W) of each level.
            gt_boxes: Tensor[B, G, 4] xyxy pixels, gt_labels: Tensor[B, G] int64, gt_mask: Tensor[B, G] bool
                (:func:`detforge.targets.pad_targets`).
            box_log_var: Tensor[B, P, 4] log-variance of the sides in stride units; needed when
                ``uncertainty_weight > 0``.
            point_strides: (stride_y, stride_x) spacing of each level's points when not the nominal stride
                (:func:`detforge.boxes.padded_strides`).

        Returns:
            ``loss`` (the weighted total), detached ``cls_loss``, ``reg_loss``, ``centerness_loss`` (and
            ``uncertainty_loss``; torchvision's names with ``convention="torchvision"``), and ``num_pos``
            (this rank's positives).
        """
        num_classes = cls_logits.shape[-1]
        check_labels(gt_labels, gt_mask, num_classes)
        assigned = self.assigner(feat_sizes, gt_boxes, gt_labels, gt_mask, point_strides)
        pos = assigned.labels >= 0  # [B, P]
        num_pos = positives_normaliser(pos.sum())

        cls_target = torch.zeros_like(cls_logits)  # [B, P, C]
        pos_target = nn.functional.one_hot(assigned.labels[pos], num_classes).to(cls_target.dtype)  # [M, C]
        if self.cls_quality:  # soft target at the true class: IoU of the predicted box with its ground truth
            iou = paired_box_iou(
                ltrb_to_origin_xyxy(box_reg[pos].detach().float()), ltrb_to_origin_xyxy(assigned.ltrb[pos])
            )  # [M]
            pos_target = pos_target * iou.clamp(min=0.0).to(cls_target.dtype)[:, None]
        cls_target[pos] = pos_target
        cls_loss = self.cls_loss_fn(cls_logits, cls_target) / num_pos

        ctr_target = assigned.centerness[pos]  # [M]
        pred_ltrb, target_ltrb = box_reg[pos], assigned.ltrb[pos]  # [M, 4]
        if self.convention == "torchvision":  # unweighted, per positive
            reg_loss = self.reg_loss_fn(pred_ltrb, target_ltrb, None) / num_pos
        else:
            ctr_norm = mean_over_ranks(ctr_target.sum()).clamp(min=1e-6)
            reg_loss = self.reg_loss_fn(pred_ltrb, target_ltrb, ctr_target) / ctr_norm
        centerness_loss = self.centerness_loss_fn(centerness[pos], ctr_target) / num_pos

        total = (
            self.cls_weight * cls_loss + self.reg_weight * reg_loss + self.centerness_weight * centerness_loss
        )
        names = _PART_NAMES[self.convention]
        losses = dict(zip(names, (cls_loss, reg_loss, centerness_loss)))
        if self.uncertainty_weight > 0:
            if box_log_var is None:
                raise ValueError("FCOSCriterion with uncertainty_weight > 0 needs box_log_var [B, P, 4]")
            _, point_strides = grid_points(feat_sizes, self.strides, device=box_reg.device)  # [P]
            stride = point_strides[None].expand_as(pos)[pos][:, None]  # [M, 1]
            log_pred = (pred_ltrb / stride).clamp(min=1e-4).log()  # [M, 4]
            log_target = (target_ltrb / stride).clamp(min=1e-4).log()  # [M, 4]
            uncertainty_loss = self.uncertainty_loss_fn(log_pred, box_log_var[pos], log_target)
            uncertainty_loss = uncertainty_loss / (4 * num_pos)  # mean over the positives' four sides
            total = total + self.uncertainty_weight * uncertainty_loss
            losses["uncertainty_loss"] = uncertainty_loss
        return {
            "loss": total,
            **{k: v.detach() for k, v in losses.items()},
            "num_pos": pos.sum().detach().float(),
        }
