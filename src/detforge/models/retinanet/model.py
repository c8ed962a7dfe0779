"""RetinaNet (Lin et al. 2017, "Focal Loss for Dense Object Detection") on any timm backbone + FPN: the
anchor-based one-stage detector, batched over images.

``forward(images) -> raw outputs`` (class logits and box deltas of every anchor), ``loss(outputs, targets)``
(:class:`~detforge.models.retinanet.loss.RetinaNetLoss`), ``postprocess(outputs, image_sizes)`` (the
base's: per-level top-k, score threshold, NMS per image and class); the same steps in train and eval mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Unpack

from torch import Tensor, nn

from detforge.boxes import AnchorBoxCoder
from detforge.models.backbone import FeatureBackboneConfig
from detforge.models.base import PostprocessOptions
from detforge.models.faster_rcnn.anchors import AnchorGenerator
from detforge.models.pyramid_detector import PyramidDetector
from detforge.models.retinanet.head import RetinaNetHead, RetinaNetNorm
from detforge.models.retinanet.loss import RetinaNetBoxLoss, RetinaNetLoss
from detforge.targets import pad_targets

__all__ = ["RetinaNet", "retinanet_anchor_sizes"]


def retinanet_anchor_sizes(
    strides: Sequence[int], anchor_scale: float = 4.0, scales_per_octave: int = 3
) -> tuple[tuple[int, ...], ...]:
    """The paper's anchor sizes per level: ``anchor_scale * stride * 2^(i / scales_per_octave)`` for
    ``i < scales_per_octave``, truncated to whole pixels as torchvision's ``(x, int(x * 2^(1/3)),
    int(x * 2^(2/3)))``: (32, 40, 50), (64, 80, 101), ..., (512, 645, 812) on strides 8-128."""
    return tuple(
        tuple(int(anchor_scale * s * 2.0 ** (i / scales_per_octave)) for i in range(scales_per_octave))
        for s in strides
    )


class RetinaNet(PyramidDetector):
    """RetinaNet on any timm backbone.

    Args:
        backbone: timm model name, ``FeatureBackboneConfig`` or a built timm feature extractor.
        num_classes: object classes (labels 0..C-1, sigmoid per class).
        fpn_channels: channels of the FPN and the head.
        extra_levels: stride-2 levels above the backbone's coarsest (2: P6, P7).
        extra_from: what P6 convolves: "fpn" (P5: torchvision's v1, FCOS) or "backbone" (C5: the paper,
            torchvision's v2).
        anchor_sizes: anchor sizes (pixels, square roots of the areas) per level; None:
            :func:`retinanet_anchor_sizes` of the strides and ``anchor_scale`` (torchvision's 32-812 on P3-P7).
        anchor_scale: the smallest anchor of a level in strides (4 in the paper), when ``anchor_sizes`` is None.
        aspect_ratios: anchor height / width ratios (one tuple for every level, or one per level).
        head_num_convs: 3x3 conv blocks in each subnet; head_norm: "none" or "GN" (torchvision's v2).
        prior_prob: the classifier's initial foreground probability.
        fg_iou_thresh, bg_iou_thresh: anchors at IoU >= fg are foreground, < bg background, between ignored.
        focal_alpha, focal_gamma: the focal loss's.
        box_loss: "l1" (deltas; torchvision's v1), "smooth_l1" (deltas, ``smooth_l1_beta``) or "giou"
            (decoded boxes; torchvision's v2).
        smooth_l1_beta: the smooth L1's beta.
        box_weights: the deltas' weights (wx, wy, ww, wh) (:class:`~detforge.boxes.AnchorBoxCoder`).
        cls_loss_weight, reg_loss_weight: weights of ``classification`` and ``bbox_regression`` in ``loss``.
        in_chans, input_size, channels_last, **postprocess: image, memory-format and post-processing
            settings (``score_thresh``, ``nms_thresh``, ``pre_nms_topk`` per level, ``max_detections_per_image``,
            ``nms_method``, ``soft_nms_sigma``), as in :class:`PyramidDetector`.

    Anchors are torchvision's: a level's strides are the padded batch's ``(H // H_l, W // W_l)`` per axis
    (stride 53, not 64, for P6 of a 160 px high batch), the anchors centred on ``(x * stride_x, y * stride_y)``
    with their corners rounded to whole pixels.
    """

    postprocess_defaults = {"nms_thresh": 0.5, "max_detections_per_image": 300}

    def __init__(
        self,
        backbone: str | FeatureBackboneConfig | nn.Module,
        num_classes: int,
        fpn_channels: int = 256,
        extra_levels: int = 2,
        extra_from: Literal["fpn", "backbone"] = "fpn",
        anchor_sizes: Sequence[Sequence[float]] | None = None,
        anchor_scale: float = 4.0,
        aspect_ratios: Sequence[Sequence[float]] = ((0.5, 1.0, 2.0),),
        head_num_convs: int = 4,
        head_norm: RetinaNetNorm = "none",
        prior_prob: float = 0.01,
        fg_iou_thresh: float = 0.5,
        bg_iou_thresh: float = 0.4,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        box_loss: RetinaNetBoxLoss = "l1",
        smooth_l1_beta: float = 0.1,
        box_weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
        cls_loss_weight: float = 1.0,
        reg_loss_weight: float = 1.0,
        in_chans: int = 3,
        input_size: tuple[int, int] = (320, 320),
        channels_last: bool = True,
        **postprocess: Unpack[PostprocessOptions],
    ) -> None:
        if extra_from not in ("fpn", "backbone"):
            raise ValueError(f"extra_from must be 'fpn' or 'backbone', got {extra_from!r}")
        if anchor_scale <= 0:
            raise ValueError(f"anchor_scale must be > 0, got {anchor_scale}")
        super().__init__(
            backbone,
            num_classes,
            fpn_channels=fpn_channels,
            extra_levels=extra_levels,
            in_chans=in_chans,
            input_size=input_size,
            channels_last=channels_last,
            extra_from=extra_from,
            **postprocess,
        )
        sizes = retinanet_anchor_sizes(self.strides, anchor_scale) if anchor_sizes is None else anchor_sizes
        self.anchor_generator = AnchorGenerator(self.strides, sizes, aspect_ratios)
        self.box_coder = AnchorBoxCoder(tuple(box_weights))
        self.head = RetinaNetHead(
            fpn_channels,
            self.anchor_generator.num_anchors,
            num_classes,
            head_num_convs,
            head_norm,
            prior_prob,
        )
        self.criterion = RetinaNetLoss(
            num_classes,
            self.box_coder,
            fg_iou_thresh=fg_iou_thresh,
            bg_iou_thresh=bg_iou_thresh,
            focal_alpha=focal_alpha,
            focal_gamma=focal_gamma,
            box_loss=box_loss,
            smooth_l1_beta=smooth_l1_beta,
            cls_weight=cls_loss_weight,
            reg_weight=reg_loss_weight,
        )
        self.apply_memory_format()

    def forward(self, images: Tensor) -> dict[str, Any]:
        """Raw outputs for ``images`` (Tensor[B, in_chans, H, W] in [0, 1]): ``cls_logits`` (Tensor[B, P, C]),
        ``bbox_regression`` (Tensor[B, P, 4]), ``feat_sizes`` and ``image_size`` (the batch's (H, W), which
        places the anchors)."""
        outputs = super().forward(images)
        outputs["image_size"] = (int(images.shape[-2]), int(images.shape[-1]))
        return outputs

    def anchors(self, outputs: dict[str, Any]) -> Tensor:
        """The anchors of ``outputs`` (Tensor[P, 4] xyxy, the order of the head's P)."""
        device = outputs["cls_logits"].device
        anchors, _ = self.anchor_generator(outputs["feat_sizes"], device, image_size=outputs["image_size"])
        return anchors

    def level_sizes(self, outputs: dict[str, Any]) -> list[int]:
        """Anchors per level (the per-level top-k's groups)."""
        return [int(h) * int(w) * self.anchor_generator.num_anchors for h, w in outputs["feat_sizes"]]

    def loss(self, outputs: dict[str, Any], targets: list[dict]) -> dict[str, Tensor]:
        """``loss`` and torchvision's parts ``classification`` and ``bbox_regression`` (each normalised by
        the image's foreground anchors, averaged over the images), and ``num_pos``. ``targets``: per image
        ``boxes`` (Tensor[N, 4] xyxy pixels of the batch) and ``labels`` (Tensor[N]); crowd / ignored boxes
        are left out (:func:`detforge.targets.pad_targets`)."""
        gt_boxes, gt_labels, gt_mask = pad_targets(targets, outputs["cls_logits"].device)
        return self.criterion(
            outputs["cls_logits"],
            outputs["bbox_regression"],
            self.anchors(outputs),
            gt_boxes,
            gt_labels,
            gt_mask,
        )

    def class_layers(self) -> dict[str, tuple[int, int, int]]:
        """The class layer for fine-tuning's ``keep_classes``: per anchor of a location, one row per class (no
        background): layout (anchors per location, 0, 1)."""
        layout = (self.anchor_generator.num_anchors, 0, 1)
        return {"head.cls_logits.weight": layout, "head.cls_logits.bias": layout}

    def decode(self, outputs: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """Class probabilities (Tensor[B, P, C]) and xyxy boxes (Tensor[B, P, 4]) of every anchor."""
        anchors = self.anchors(outputs)  # [P, 4]
        boxes = self.box_coder.decode(anchors, outputs["bbox_regression"].float())  # [B, P, 4]
        return outputs["cls_logits"].float().sigmoid(), boxes
