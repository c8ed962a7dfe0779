"""Bare YOLOX-style detector: timm backbone, FPN, decoupled YOLOX head,
:class:`~detforge.models.criteria.YOLOXCriterion` (SimOTA), postprocess.

Same three steps in train and eval mode: ``forward(images) -> raw outputs``, ``loss(outputs, targets)``,
``postprocess(outputs, image_sizes)``. The neck is a plain top-down FPN (YOLOX uses a PAFPN).
"""

from __future__ import annotations

from typing import Unpack

from torch import Tensor, nn

from detforge.assigners.simota import SimOTAAssigner
from detforge.models.backbone import FeatureBackboneConfig
from detforge.models.base import PostprocessOptions
from detforge.models.criteria import IoULossName, YOLOXCriterion
from detforge.models.heads.yolox import YOLOXHead
from detforge.models.pyramid_detector import PyramidDetector
from detforge.targets import pad_targets

__all__ = ["YOLOX"]


class YOLOX(PyramidDetector):
    """YOLOX (Ge et al. 2021) head and SimOTA on any timm backbone.

    Args:
        backbone: timm model name, ``FeatureBackboneConfig`` or a built timm feature extractor.
        num_classes: object classes.
        fpn_channels: channels of the FPN levels.
        head_width: hidden channels of the head's stems and branches.
        head_num_convs: 3x3 convs in each head branch.
        extra_levels: stride-2 levels above the backbone's coarsest (YOLOX: 0, strides 8, 16, 32).
        center_radius, candidate_topk: SimOTA's centre prior (in strides) and dynamic-k candidates.
        cls_loss_fn: "bce" or a registered loss name, or a module called as
            ``fn(logits [N, C], soft_targets [N, C]) -> summed loss``; targets are one-hot times the IoU.
        reg_loss_fn: "giou" or another IoU-family name (xyxy), or a module called as
            ``fn(pred [N, 4], target [N, 4]) -> summed loss``.
        cls_loss_weight, reg_loss_weight, obj_loss_weight: weights of the loss parts (YOLOX: 1, 5, 1).
        in_chans, input_size, channels_last, **postprocess: image, memory-format and post-processing
            settings (``score_thresh``, ``nms_thresh``, ``pre_nms_topk``, ``max_detections_per_image``,
            ``nms_method``, ``soft_nms_sigma``), as in :class:`PyramidDetector`;
            the score is ``sigmoid(cls) * sigmoid(obj)``.
    """

    def __init__(
        self,
        backbone: str | FeatureBackboneConfig | nn.Module,
        num_classes: int,
        fpn_channels: int = 256,
        head_width: int = 256,
        head_num_convs: int = 2,
        extra_levels: int = 0,
        center_radius: float = 2.5,
        candidate_topk: int = 10,
        cls_loss_fn: str | nn.Module = "bce",
        reg_loss_fn: IoULossName | nn.Module = "giou",
        cls_loss_weight: float = 1.0,
        reg_loss_weight: float = 5.0,
        obj_loss_weight: float = 1.0,
        in_chans: int = 3,
        input_size: tuple[int, int] = (320, 320),
        channels_last: bool = True,
        **postprocess: Unpack[PostprocessOptions],
    ) -> None:
        super().__init__(
            backbone,
            num_classes,
            fpn_channels=fpn_channels,
            extra_levels=extra_levels,
            in_chans=in_chans,
            input_size=input_size,
            channels_last=channels_last,
            **postprocess,
        )
        self.head = YOLOXHead(fpn_channels, num_classes, self.strides, head_width, head_num_convs)
        self.criterion = YOLOXCriterion(
            self.strides,
            center_radius=center_radius,
            candidate_topk=candidate_topk,
            cls_loss=cls_loss_fn,
            reg_loss=reg_loss_fn,
            cls_weight=cls_loss_weight,
            reg_weight=reg_loss_weight,
            obj_weight=obj_loss_weight,
        )
        self.apply_memory_format()

    @property
    def assigner(self) -> SimOTAAssigner:
        """The criterion's SimOTA assigner."""
        return self.criterion.assigner

    def loss(self, outputs: dict, targets: list[dict]) -> dict[str, Tensor]:
        """YOLOX losses of a batch (:class:`~detforge.models.criteria.YOLOXCriterion`), each divided by the
        number of SimOTA positives averaged over DDP ranks.

        ``targets``: one dict per image with ``boxes`` (Tensor[N, 4] xyxy pixels) and ``labels`` (Tensor[N]).
        """
        gt_boxes, gt_labels, gt_mask = pad_targets(targets, outputs["cls_logits"].device)
        return self.criterion(
            outputs["cls_logits"],  # [B, A, C]
            outputs["boxes"],  # [B, A, 4]
            outputs["obj_logits"],  # [B, A]
            outputs["feat_sizes"],
            gt_boxes,
            gt_labels,
            gt_mask,
        )

    def decode(self, outputs: dict) -> tuple[Tensor, Tensor]:
        """Class scores ``sigmoid(cls) * sigmoid(obj)`` (Tensor[B, A, C]) and xyxy boxes (Tensor[B, A, 4])."""
        scores = outputs["cls_logits"].float().sigmoid() * outputs["obj_logits"].float().sigmoid()[..., None]
        return scores, outputs["boxes"].float()
