"""Bare FCOS detector: timm backbone, FPN, FCOS head, batched assigner and losses, postprocess.

Same three steps in train and eval mode: ``forward(images) -> raw outputs``, ``loss(outputs, targets)``,
``postprocess(outputs, image_sizes)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from detforge.assigners.fcos import FCOSAssigner
from detforge.losses import get_loss
from detforge.losses.iou import ltrb_to_origin_xyxy, paired_box_iou
from detforge.losses.quality_focal import QualityFocalLoss
from detforge.models.backbone import FeatureBackboneConfig
from detforge.models.heads.fcos import FCOSHead, FCOSNorm
from detforge.models.pyramid_detector import PyramidDetector, check_labels, mean_over_ranks
from detforge.postprocess import NMSMethod, distances_to_boxes, make_points
from detforge.targets import pad_targets

__all__ = ["FCOS", "check_labels", "default_regress_ranges", "mean_over_ranks"]


def default_regress_ranges(strides: Sequence[int]) -> tuple[tuple[float, float], ...]:
    """FCOS's size ranges for any strides: level ``l`` takes boxes whose largest distance lies in
    ``(8 * s_{l-1}, 8 * s_l]``; the first starts at -1, the last is open. P3-P7 gives FCOS's
    ``(-1, 64), (64, 128), (128, 256), (256, 512), (512, inf)``."""
    bounds = [-1.0] + [8.0 * s for s in strides[:-1]] + [math.inf]
    return tuple(zip(bounds[:-1], bounds[1:]))


class FCOS(PyramidDetector):
    """FCOS (Tian et al. 2019) on any timm backbone.

    Args:
        backbone: timm model name, ``FeatureBackboneConfig`` (pretrained weights, out_indices, ...) or a built
            timm feature extractor.
        num_classes: object classes.
        fpn_channels: channels of the FPN and the head.
        head_num_convs: conv layers in each head tower.
        extra_levels: stride-2 levels above the backbone's coarsest (2: P6, P7, strides 64 and 128 over a
            backbone ending at stride 32). ``self.strides`` lists all levels' strides.
        regress_ranges: box size range per level; None gives :func:`default_regress_ranges` of the strides.
        center_sampling_radius: positives within ``radius * stride`` of the box centre (None: whole box).
        head_norm: head tower normalisation, "GN", "BN" or "none".
        focal_alpha, focal_gamma: focal-loss parameters of the default classification loss.
        cls_loss_fn: "focal", "quality_focal" (IoU-aware targets, GFL; ``focal_gamma`` is its beta) or any
            registered loss name, or a module called as ``fn(logits [N, C], one_hot [N, C]) -> summed loss``.
        reg_loss_fn: "giou" or another IoU-family name (built with ``box_format="ltrb"``), or a module called
            as ``fn(pred_ltrb [N, 4], target_ltrb [N, 4], weight [N]) -> summed weighted loss``.
        cls_loss_weight, reg_loss_weight, centerness_loss_weight: weights of the loss parts in ``loss``.
        score_thresh, nms_thresh, max_detections_per_image, pre_nms_topk, nms_method, in_chans, input_size,
            channels_last: postprocess, image and memory-format settings, as in :class:`PyramidDetector`.
    """

    def __init__(
        self,
        backbone: str | FeatureBackboneConfig | nn.Module,
        num_classes: int,
        fpn_channels: int = 256,
        head_num_convs: int = 4,
        extra_levels: int = 2,
        regress_ranges: Sequence[tuple[float, float]] | None = None,
        center_sampling_radius: float | None = 1.5,
        head_norm: FCOSNorm = "GN",
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        cls_loss_fn: str | nn.Module = "focal",
        reg_loss_fn: str | nn.Module = "giou",
        cls_loss_weight: float = 1.0,
        reg_loss_weight: float = 1.0,
        centerness_loss_weight: float = 1.0,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.6,
        max_detections_per_image: int = 100,
        pre_nms_topk: int = 1000,
        nms_method: NMSMethod = "hard",
        in_chans: int = 3,
        input_size: tuple[int, int] = (320, 320),
        channels_last: bool = True,
    ) -> None:
        super().__init__(
            backbone,
            num_classes,
            fpn_channels=fpn_channels,
            extra_levels=extra_levels,
            score_thresh=score_thresh,
            nms_thresh=nms_thresh,
            max_detections_per_image=max_detections_per_image,
            pre_nms_topk=pre_nms_topk,
            nms_method=nms_method,
            in_chans=in_chans,
            input_size=input_size,
            channels_last=channels_last,
        )
        if regress_ranges is None:
            regress_ranges = default_regress_ranges(self.strides)
        self.head = FCOSHead(fpn_channels, num_classes, self.strides, head_num_convs, norm=head_norm)
        self.assigner = FCOSAssigner(self.strides, regress_ranges, center_sampling_radius)
        # Quality focal loss (GFL) learns IoU-aware scores: the true class's target is the IoU of the box.
        self.cls_quality = cls_loss_fn == "quality_focal" or isinstance(cls_loss_fn, QualityFocalLoss)
        if isinstance(cls_loss_fn, str):
            kw: dict = {}
            if cls_loss_fn == "focal":
                kw = dict(alpha=focal_alpha, gamma=focal_gamma)
            elif cls_loss_fn == "quality_focal":
                kw = dict(beta=focal_gamma)
            cls_loss_fn = get_loss(cls_loss_fn, reduction="sum", **kw)
        if isinstance(reg_loss_fn, str):
            reg_loss_fn = get_loss(reg_loss_fn, box_format="ltrb", reduction="sum")
        self.cls_loss_fn = cls_loss_fn
        self.reg_loss_fn = reg_loss_fn
        self.centerness_loss_fn = get_loss("bce", reduction="sum")
        self.cls_loss_weight = cls_loss_weight
        self.reg_loss_weight = reg_loss_weight
        self.centerness_loss_weight = centerness_loss_weight
        self.apply_memory_format()

    def loss(self, outputs: dict, targets: list[dict]) -> dict[str, Tensor]:
        """FCOS losses of a batch.

        ``targets``: one dict per image with ``boxes`` (Tensor[N, 4] xyxy pixels) and ``labels`` (Tensor[N]);
        crowd / ignored boxes are left out (:func:`detforge.targets.pad_targets`). The classification and
        centerness losses are divided by the number of positives, the box loss by the sum of the positives'
        centerness targets, both averaged over DDP ranks.
        """
        cls_logits = outputs["cls_logits"]  # [B, P, C]
        box_reg = outputs["box_reg"]  # [B, P, 4]
        centerness = outputs["centerness"]  # [B, P]
        gt_boxes, gt_labels, gt_mask = pad_targets(targets, cls_logits.device)
        check_labels(gt_labels, gt_mask, self.num_classes)
        assigned = self.assigner(outputs["feat_sizes"], gt_boxes, gt_labels, gt_mask)
        pos = assigned.labels >= 0  # [B, P]
        num_pos = mean_over_ranks(pos.sum()).clamp(min=1.0)

        one_hot = torch.zeros_like(cls_logits)  # [B, P, C]
        pos_target = nn.functional.one_hot(assigned.labels[pos], self.num_classes).to(one_hot.dtype)  # [N_pos, C]
        if self.cls_quality:  # soft target at the true class: IoU of the predicted box with its ground truth
            iou = paired_box_iou(
                ltrb_to_origin_xyxy(box_reg[pos].detach().float()), ltrb_to_origin_xyxy(assigned.ltrb[pos])
            )  # [N_pos]
            pos_target = pos_target * iou.clamp(min=0.0).to(one_hot.dtype)[:, None]
        one_hot[pos] = pos_target
        cls_loss = self.cls_loss_fn(cls_logits, one_hot) / num_pos

        ctr_target = assigned.centerness[pos]  # [N_pos]
        ctr_norm = mean_over_ranks(ctr_target.sum()).clamp(min=1e-6)
        reg_loss = self.reg_loss_fn(box_reg[pos], assigned.ltrb[pos], ctr_target) / ctr_norm
        centerness_loss = self.centerness_loss_fn(centerness[pos], ctr_target) / num_pos

        total = (
            self.cls_loss_weight * cls_loss
            + self.reg_loss_weight * reg_loss
            + self.centerness_loss_weight * centerness_loss
        )
        return {
            "loss": total,
            "cls_loss": cls_loss.detach(),
            "reg_loss": reg_loss.detach(),
            "centerness_loss": centerness_loss.detach(),
            "num_pos": pos.sum().detach().float(),
        }

    def decode(self, outputs: dict) -> tuple[Tensor, Tensor]:
        """Per-location class scores ``sqrt(sigmoid(cls) * sigmoid(centerness))`` (Tensor[B, P, C]) and
        xyxy boxes (Tensor[B, P, 4])."""
        points, _ = make_points(outputs["feat_sizes"], self.strides, outputs["box_reg"].device)  # [P, 2]
        boxes = distances_to_boxes(points, outputs["box_reg"].float())  # [B, P, 4]
        scores = (
            outputs["cls_logits"].float().sigmoid() * outputs["centerness"].float().sigmoid()[..., None]
        ).sqrt()  # [B, P, C]
        return scores, boxes
