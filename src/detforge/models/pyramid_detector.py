"""What FCOS and YOLOX share: a one-stage detector on a ``PyramidBackbone`` (timm backbone + FPN).

:class:`PyramidDetector` builds the pyramid, keeps the class count, image channels, input size and
postprocess settings, runs ``forward`` and ``postprocess``; a subclass adds its head, its criterion
(:mod:`detforge.models.criteria`, where the losses' helpers :func:`check_labels` and :func:`mean_over_ranks`
now live; re-exported here), ``loss`` and ``decode``.
"""

from __future__ import annotations

from typing import Literal, Unpack

import torch
from torch import Tensor, nn

from detforge.models.backbone import FeatureBackboneConfig, PyramidBackbone
from detforge.models.base import ChannelsLast, Detector, PostprocessOptions
from detforge.models.criteria.common import check_labels, mean_over_ranks  # re-exported, moved there

__all__ = ["PyramidDetector", "check_labels", "mean_over_ranks"]


class PyramidDetector(ChannelsLast, Detector):
    """Base of the one-stage detectors on a timm backbone + FPN (:class:`~detforge.models.fcos.FCOS`,
    :class:`~detforge.models.yolox.YOLOX`).

    Builds ``self.features`` (a :class:`PyramidBackbone`) and sets ``num_classes``, ``in_chans``,
    ``default_input_size``, ``strides`` (every pyramid level's stride) and the postprocess settings. The
    subclass then builds ``self.head`` (``head(list of pyramid features) -> raw outputs dict`` with
    ``feat_sizes``), calls :meth:`apply_memory_format` once its layers exist, and defines ``loss`` and
    ``decode(outputs) -> (scores Tensor[B, P, C], boxes Tensor[B, P, 4])``.

    Args:
        backbone: timm model name, ``FeatureBackboneConfig`` or a built timm feature extractor.
        num_classes: object classes.
        fpn_channels: channels of the FPN levels.
        extra_levels: stride-2 levels above the backbone's coarsest.
        in_chans: image channels.
        input_size: (h, w) the model is meant to run at (``default_input_size``); a fixed-size timm backbone
            (ViT, DeiT) is built for it, so it exports at this size.
        channels_last: run convolutions in channels-last memory format (faster on CPU and recent GPUs).
        extra_from: what the first extra level convolves, "fpn" (P5) or "backbone" (C5) (the
            :class:`~detforge.models.necks.FPN`'s).
        **postprocess: post-processing settings (:class:`~detforge.models.base.PostprocessOptions`;
            ``pre_nms_topk`` per level and image).
    """

    def __init__(
        self,
        backbone: str | FeatureBackboneConfig | nn.Module,
        num_classes: int,
        fpn_channels: int,
        extra_levels: int,
        in_chans: int,
        input_size: tuple[int, int],
        channels_last: bool,
        extra_from: Literal["fpn", "backbone"] = "fpn",
        **postprocess: Unpack[PostprocessOptions],
    ) -> None:
        super().__init__(num_classes, in_chans=in_chans, input_size=input_size, **postprocess)
        self.features = PyramidBackbone(
            backbone,
            fpn_channels,
            extra_levels,
            in_chans,
            input_size=tuple(input_size),
            extra_from=extra_from,
        )
        self.strides: tuple[int, ...] = self.features.strides
        self.channels_last = channels_last
        # The head's own format: MemoryFormatChoice may run it in the other one (with AVX2 kernels a GroupNorm
        # head trains ~10% faster in NCHW while the backbone is faster channels-last).
        self.channels_last_head = channels_last

    @property
    def backbone(self) -> nn.Module:
        """The timm feature extractor (``features.body``): what ``ObjectDetector.freeze_backbone`` freezes."""
        return self.features.body

    def forward(self, images: Tensor) -> dict[str, Tensor | list[tuple[int, int]]]:
        """Raw head outputs for ``images`` (Tensor[B, in_chans, H, W] in [0, 1])."""
        features = self.features(self.in_memory_format(images))  # list of Tensor[B, C, H_l, W_l]
        if self.channels_last_head != self.channels_last:
            fmt = torch.channels_last if self.channels_last_head else torch.contiguous_format
            features = [f.contiguous(memory_format=fmt) for f in features]
        return self.head(features)
