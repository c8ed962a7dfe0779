"""Bare FCOS detector: timm backbone, FPN, FCOS head, :class:`~detforge.models.criteria.FCOSCriterion`,
postprocess.

Same three steps in train and eval mode: ``forward(images) -> raw outputs``, ``loss(outputs, targets)``,
``postprocess(outputs, image_sizes)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Unpack, get_args

from torch import Tensor, nn

from detforge.assigners.fcos import FCOSAssigner
from detforge.boxes import ltrb_to_xyxy, padded_strides
from detforge.models.backbone import FeatureBackboneConfig
from detforge.models.base import PostprocessOptions
from detforge.models.criteria import FCOSCriterion, IoULossName, default_regress_ranges
from detforge.models.criteria.fcos import LossConvention
from detforge.models.heads.fcos import BoxActivation, FCOSHead, FCOSNorm
from detforge.models.pyramid_detector import PyramidDetector
from detforge.targets import pad_targets

__all__ = ["FCOS", "PointGrid", "default_regress_ranges"]

PointGrid = Literal["centres", "torchvision"]
"""Where a level's locations lie: ``centres``: ``((fx + 0.5) * s, (fy + 0.5) * s)`` with the nominal stride
``s``; ``torchvision``: torchvision's anchor centres ``(fx * sx, fy * sy)`` with ``(sy, sx)`` the padded
input's side // the feature map's side (:func:`detforge.boxes.padded_strides`: 61 rather than 64 for the P6
level of an 800-row input), while the box scale, centre-sampling radius and size ranges keep ``s``."""


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
        box_activation: "exp" (``exp(scale_l * x) * stride_l``, FCOS) or "relu" (``relu(x) * stride_l``,
            torchvision's FCOS) box branch.
        head_conv_bias: the head's tower convolutions have a bias before their norm (torchvision's FCOS).
        points: location grid, "centres" or "torchvision" (:data:`PointGrid`).
        loss_convention: "fcos" or "torchvision" (torchvision's matching, unweighted box loss and loss
            names ``classification`` / ``bbox_regression`` / ``bbox_ctrness``;
            :data:`~detforge.models.criteria.fcos.LossConvention`).
        in_chans, input_size, channels_last, **postprocess: image, memory-format and post-processing
            settings (``score_thresh``, ``nms_thresh``, ``pre_nms_topk``, ``max_detections_per_image``,
            ``nms_method``, ``soft_nms_sigma``), as in :class:`PyramidDetector`.
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
        reg_loss_fn: IoULossName | nn.Module = "giou",
        cls_loss_weight: float = 1.0,
        reg_loss_weight: float = 1.0,
        centerness_loss_weight: float = 1.0,
        box_activation: BoxActivation = "exp",
        head_conv_bias: bool = False,
        points: PointGrid = "centres",
        loss_convention: LossConvention = "fcos",
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
        if points not in get_args(PointGrid):
            raise ValueError(f"points must be one of {get_args(PointGrid)}, got {points!r}")
        self.points = points
        self.head = FCOSHead(
            fpn_channels,
            num_classes,
            self.strides,
            head_num_convs,
            norm=head_norm,
            box_activation=box_activation,
            conv_bias=head_conv_bias,
        )
        self.criterion = FCOSCriterion(
            self.strides,
            regress_ranges=regress_ranges,
            center_sampling_radius=center_sampling_radius,
            cls_loss=cls_loss_fn,
            reg_loss=reg_loss_fn,
            focal_alpha=focal_alpha,
            focal_gamma=focal_gamma,
            cls_weight=cls_loss_weight,
            reg_weight=reg_loss_weight,
            centerness_weight=centerness_loss_weight,
            point_offset=0.5 if points == "centres" else 0.0,
            convention=loss_convention,
        )
        self.apply_memory_format()

    @property
    def assigner(self) -> FCOSAssigner:
        """The criterion's FCOS assigner (location points, targets)."""
        return self.criterion.assigner

    @property
    def cls_quality(self) -> bool:
        """Whether the classification targets are IoU-aware (quality focal loss)."""
        return self.criterion.cls_quality

    @property
    def cls_loss_fn(self) -> nn.Module:
        """The criterion's classification loss module."""
        return self.criterion.cls_loss_fn

    def forward(self, images: Tensor) -> dict[str, Any]:
        """Raw head outputs for ``images`` (Tensor[B, in_chans, H, W] in [0, 1]): ``cls_logits`` [B, P, C],
        ``box_reg`` [B, P, 4], ``centerness`` [B, P], ``feat_sizes``; with ``points="torchvision"`` also
        ``image_size`` (H, W), which the location grid depends on."""
        outputs = super().forward(images)
        if self.points == "torchvision":
            outputs["image_size"] = (int(images.shape[-2]), int(images.shape[-1]))
        return outputs

    def point_strides(self, outputs: dict) -> list[tuple[int, int]] | None:
        """(stride_y, stride_x) of each level's locations when they are not the nominal strides
        (``points="torchvision"``), else None."""
        if self.points == "centres":
            return None
        return padded_strides(outputs["image_size"], outputs["feat_sizes"])

    def loss(self, outputs: dict, targets: list[dict]) -> dict[str, Tensor]:
        """FCOS losses of a batch (:class:`~detforge.models.criteria.FCOSCriterion`).

        ``targets``: one dict per image with ``boxes`` (Tensor[N, 4] xyxy pixels) and ``labels`` (Tensor[N]);
        crowd / ignored boxes are left out (:func:`detforge.targets.pad_targets`). The classification and
        centerness losses are divided by the number of positives, the box loss by the sum of the positives'
        centerness targets (``loss_convention="torchvision"``: unweighted, by the number of positives), both
        averaged over DDP ranks.
        """
        gt_boxes, gt_labels, gt_mask = pad_targets(targets, outputs["cls_logits"].device)
        return self.criterion(
            outputs["cls_logits"],  # [B, P, C]
            outputs["box_reg"],  # [B, P, 4]
            outputs["centerness"],  # [B, P]
            outputs["feat_sizes"],
            gt_boxes,
            gt_labels,
            gt_mask,
            point_strides=self.point_strides(outputs),
        )

    def class_layers(self) -> dict[str, tuple[int, int, int]]:
        """The class layer (one row per class, no background), for fine-tuning's ``keep_classes``."""
        return {"head.cls_logits.weight": (1, 0, 1), "head.cls_logits.bias": (1, 0, 1)}

    def decode(self, outputs: dict) -> tuple[Tensor, Tensor]:
        """Per-location class scores ``sqrt(sigmoid(cls) * sigmoid(centerness))`` (Tensor[B, P, C]) and
        xyxy boxes (Tensor[B, P, 4])."""
        device = outputs["box_reg"].device
        points, _ = self.assigner.points(outputs["feat_sizes"], device, self.point_strides(outputs))  # [P, 2]
        boxes = ltrb_to_xyxy(points, outputs["box_reg"].float())  # [B, P, 4]
        scores = (
            outputs["cls_logits"].float().sigmoid() * outputs["centerness"].float().sigmoid()[..., None]
        ).sqrt()  # [B, P, C]
        return scores, boxes
