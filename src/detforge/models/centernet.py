"""CenterNet (Zhou et al. 2019, "Objects as Points") on any timm backbone, and its registered builders.

An object is the peak of its class's heatmap at stride 4, with its size and sub-cell offset read at the peak:

- backbone: the last four timm feature levels (strides 4-32 on CNNs; a single-stride ViT gets ViTDet's
  simple pyramid at strides 4-32); neck: :class:`~detforge.models.necks.upsample.UpsampleNeck` (a light
  top-down FPN merge down to stride 4); head: :class:`~detforge.models.heads.centernet.CenterNetHead`;
- training: :class:`~detforge.models.criteria.centernet.CenterNetCriterion` (Gaussian heatmap targets with
  the corrected minimum-overlap radius, or the original's with ``legacy_radius=True``; penalty-reduced focal
  loss; L1 size and offset at the centres);
- decoding without NMS: :meth:`CenterNet.decode` zeroes every heatmap score that is not the maximum of its
  3 x 3 neighbourhood (max-pool peaks), so the shared post-processing with ``nms_method="none"`` keeps the
  top ``pre_nms_topk`` (100) peaks over all classes, then ``max_detections_per_image``; hard or soft NMS on
  top stays available (``nms_method``). ONNX export (raw or with detections) comes from the base class.

Registered: ``centernet_<timm name>`` for any timm backbone, ``centernet_n`` (mobilenetv3_small_100,
64 channels, 256 px) and ``centernet_resnet18`` (128-channel neck, 64-channel head, 512 px).
"""

from __future__ import annotations

from typing import Any, Unpack

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detforge.boxes import grid_points, offset_size_to_xyxy
from detforge.models.backbone import FeatureBackboneConfig, FeatureBody
from detforge.models.base import ChannelsLast, Detector, PostprocessOptions
from detforge.models.criteria.centernet import CenterNetCriterion
from detforge.models.heads.centernet import CenterNetHead
from detforge.models.necks.upsample import UpsampleNeck
from detforge.models.registry import register_model, register_prefix
from detforge.targets import pad_targets

__all__ = ["CenterNet", "build_centernet", "centernet_n", "centernet_resnet18"]

LAST_FOUR = (-4, -3, -2, -1)
"""The default backbone levels: timm's last four (strides 4, 8, 16, 32 on ResNets, MobileNets, ConvNeXt)."""


class CenterNet(ChannelsLast, Detector):
    """CenterNet on any timm backbone (module docstring).

    Args:
        backbone: timm model name, ``FeatureBackboneConfig`` or a built timm feature extractor; a name gets
            the last four levels (``LAST_FOUR``).
        num_classes: object classes.
        fpn_channels: channels of the upsampling neck.
        head_channels, head_num_convs: hidden channels and 3x3 convs of each head branch (64, 1).
        output_stride: stride of the heatmap (4).
        deformable: deformable 3x3 convs in the neck (``torchvision.ops.deform_conv2d``; such a model exports
            to ONNX only at opset 19, where ``DeformConv`` exists).
        min_overlap, legacy_radius: the Gaussian radius rule of the heatmap targets (0.7; the corrected
            formula unless ``legacy_radius``).
        heatmap_alpha, heatmap_beta: exponents of the penalty-reduced focal loss (2, 4).
        heatmap_loss_weight, size_loss_weight, offset_loss_weight: weights of the loss parts (1, 0.1, 1); size
            and offset are in heatmap cells (pixels / ``output_stride``), as in the original.
        **postprocess: the shared post-processing settings; ``pre_nms_topk`` is CenterNet's top-k over all
            classes (100) and ``nms_method`` "none" by default (:attr:`postprocess_defaults`).
        in_chans: image channels.
        input_size: (h, w) the model is meant to run at.
        channels_last: run convolutions in channels-last memory format.
    """

    postprocess_defaults = {"pre_nms_topk": 100, "nms_method": "none"}

    def __init__(
        self,
        backbone: str | FeatureBackboneConfig | nn.Module,
        num_classes: int,
        fpn_channels: int = 64,
        head_channels: int = 64,
        head_num_convs: int = 1,
        output_stride: int = 4,
        deformable: bool = False,
        min_overlap: float = 0.7,
        legacy_radius: bool = False,
        heatmap_alpha: float = 2.0,
        heatmap_beta: float = 4.0,
        heatmap_loss_weight: float = 1.0,
        size_loss_weight: float = 0.1,
        offset_loss_weight: float = 1.0,
        in_chans: int = 3,
        input_size: tuple[int, int] = (512, 512),
        channels_last: bool = True,
        **postprocess: Unpack[PostprocessOptions],
    ) -> None:
        super().__init__(num_classes, in_chans=in_chans, input_size=input_size, **postprocess)
        if isinstance(backbone, str):
            backbone = FeatureBackboneConfig(backbone, out_indices=LAST_FOUR)
        # ViT / DeiT (one stride): ViTDet's pyramid from the last map, down to stride 4
        self.features = FeatureBody(
            backbone, in_chans, tuple(input_size), pyramid_scales=(4.0, 2.0, 1.0, 0.5)
        )
        channels, strides = list(self.features.channels), list(self.features.strides)
        self.neck = UpsampleNeck(channels, strides, fpn_channels, output_stride, deformable)
        self.head = CenterNetHead(fpn_channels, num_classes, head_channels, head_num_convs)
        self.criterion = CenterNetCriterion(
            output_stride,
            min_overlap=min_overlap,
            legacy_radius=legacy_radius,
            alpha=heatmap_alpha,
            beta=heatmap_beta,
            heatmap_weight=heatmap_loss_weight,
            size_weight=size_loss_weight,
            offset_weight=offset_loss_weight,
        )
        self.strides: tuple[int, ...] = (int(output_stride),)
        self.channels_last = channels_last
        self.apply_memory_format()

    @property
    def backbone(self) -> nn.Module:
        """The timm feature extractor: what ``ObjectDetector.freeze_backbone`` freezes."""
        return self.features.body

    def forward(self, images: Tensor) -> dict[str, Any]:
        """Raw outputs for ``images`` (Tensor[B, in_chans, H, W] in [0, 1]): ``heatmap`` (Tensor[B, C, h, w]
        logits), ``size`` and ``offset`` (Tensor[B, 2, h, w], map units), ``feat_sizes`` ([(h, w)])."""
        features = self.features(self.in_memory_format(images))  # list of Tensor[B, C_i, H_i, W_i], finest first
        return self.head(self.neck(features))

    def loss(self, outputs: dict[str, Any], targets: list[dict]) -> dict[str, Tensor]:
        """CenterNet losses of a batch (:class:`~detforge.models.criteria.centernet.CenterNetCriterion`):
        ``heatmap_loss``, ``size_loss``, ``offset_loss``, each divided by the objects averaged over DDP ranks."""
        gt_boxes, gt_labels, gt_mask = pad_targets(targets, outputs["heatmap"].device)
        return self.criterion(
            outputs["heatmap"], outputs["size"], outputs["offset"], gt_boxes, gt_labels, gt_mask
        )

    def decode(self, outputs: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """Per-cell class scores, zero except at 3 x 3 heatmap peaks (Tensor[B, P, C], P = h * w row-major),
        and the box of every cell (Tensor[B, P, 4] xyxy pixels): centre ``(cell + offset) * stride``, size
        ``max(size, 0) * stride``."""
        heat = outputs["heatmap"].float().sigmoid()  # [B, C, h, w]
        peaks = heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat)  # [B, C, h, w]
        scores = peaks.flatten(2).transpose(1, 2)  # [B, P, C]
        h, w = heat.shape[-2:]
        corners, strides = grid_points([(h, w)], self.strides, heat.device, offset=0.0)  # [P, 2], [P]
        offset = outputs["offset"].float().flatten(2).transpose(1, 2)  # [B, P, 2]
        size = outputs["size"].float().flatten(2).transpose(1, 2).clamp(min=0)  # [B, P, 2]
        boxes = offset_size_to_xyxy(corners, strides, torch.cat([offset, size], dim=-1))  # [B, P, 4]
        return scores, boxes


def _backbone(
    name: str,
    pretrained: bool | str,
    out_indices: tuple[int, ...] | None,
    backbone_kwargs: dict[str, Any] | None,
) -> FeatureBackboneConfig:
    from detforge.models.zoo import _backbone as zoo_backbone

    return zoo_backbone(name, pretrained, LAST_FOUR if out_indices is None else out_indices, backbone_kwargs)


@register_prefix("centernet_")
def build_centernet(
    timm_name: str,
    num_classes: int = 80,
    pretrained: bool | str = False,
    out_indices: tuple[int, ...] | None = None,
    backbone_kwargs: dict[str, Any] | None = None,
    **kwargs: Any,
) -> CenterNet:
    """CenterNet on the timm backbone ``timm_name`` (heatmap at stride 4 from its last four levels, or
    ``out_indices``); ``backbone_kwargs`` as in :func:`detforge.models.zoo.build_fcos`."""
    return CenterNet(_backbone(timm_name, pretrained, out_indices, backbone_kwargs), num_classes, **kwargs)


@register_model("centernet_n", recipe={"model.lr": 1e-2})
def centernet_n(num_classes: int = 80, pretrained: bool | str = False, **kwargs: Any) -> CenterNet:
    """CPU-friendly CenterNet: mobilenetv3_small_100 (as ``detforge_n``), 64-channel neck and head, heatmap
    at stride 4; 256 px default input."""
    options: dict[str, Any] = dict(fpn_channels=64, head_channels=64, input_size=(256, 256))
    options.update(kwargs)
    return build_centernet("mobilenetv3_small_100", num_classes, pretrained, **options)


@register_model("centernet_resnet18")
def centernet_resnet18(num_classes: int = 80, pretrained: bool | str = False, **kwargs: Any) -> CenterNet:
    """CenterNet on timm's resnet18 (the paper's ResNet-18 setting: 64-channel head, 512 px input), with a
    128-channel FPN-merge neck instead of the paper's three deconvolutions."""
    options: dict[str, Any] = dict(fpn_channels=128, head_channels=64)
    options.update(kwargs)
    return build_centernet("resnet18", num_classes, pretrained, **options)
