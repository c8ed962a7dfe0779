"""Feature backbones from timm (``features_only=True``) for the FPN detectors.

``build_backbone("resnet18")`` returns timm's feature extractor: ``backbone(images)`` gives a list of feature
maps, ``backbone.feature_info.channels()`` / ``.reduction()`` their channels and strides.

Pretrained weights: ``pretrained=False`` (the default) never touches the network; ``pretrained=True`` loads
timm's hub weights (needs internet); ``pretrained="PATH"`` loads a local weight file through timm's
``pretrained_cfg_overlay=dict(file=PATH)``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import timm
import torch
from timm.utils.model import freeze
from torch import Tensor, nn

from detforge.models.necks.fpn import FPN

__all__ = [
    "FeatureBackboneConfig",
    "PretrainedWeightsError",
    "PyramidBackbone",
    "build_backbone",
    "freeze_backbone",
]


class PretrainedWeightsError(RuntimeError):
    """Pretrained weights could not be fetched from the hub (offline, or the name has no weights)."""


@dataclass
class FeatureBackboneConfig:
    """What to build: a timm model name and its feature-extractor options.

    Attributes:
        model_name: any timm model name that supports ``features_only`` (``timm.list_models()``).
        pretrained: False (random init), True (timm hub download) or a path to a local weight file
            (``.safetensors``, ``.pth``, ``.bin``) in timm's layout for ``model_name``.
        out_indices: which feature levels to return; (2, 3, 4) gives strides 8, 16, 32 on most CNNs.
        drop_rate: dropout rate passed to timm.
        drop_path_rate: stochastic depth rate passed to timm.
        extra_kwargs: further keyword arguments for ``timm.create_model``.
    """

    model_name: str
    pretrained: bool | str = False
    out_indices: tuple[int, ...] = (2, 3, 4)
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    extra_kwargs: dict[str, Any] = field(default_factory=dict)


def build_backbone(backbone: str | FeatureBackboneConfig, in_chans: int = 3) -> nn.Module:
    """Build a timm feature extractor.

    Args:
        backbone: a timm model name (random init, out_indices (2, 3, 4)) or a ``FeatureBackboneConfig``.
        in_chans: input image channels (3 for RGB, 1 for grayscale / thermal).

    Returns:
        The timm module: ``forward(images Tensor[B, in_chans, H, W]) -> list[Tensor[B, C_i, H / s_i, W / s_i]]``,
        with ``.feature_info.channels()`` (C_i) and ``.feature_info.reduction()`` (s_i).

    Raises:
        ValueError: unknown timm model name.
        FileNotFoundError: ``pretrained`` is a path that does not exist.
        PretrainedWeightsError: ``pretrained=True`` and the hub download failed.
    """
    cfg = FeatureBackboneConfig(backbone) if isinstance(backbone, str) else backbone
    if not timm.is_model(cfg.model_name):
        raise ValueError(
            f"unknown timm model {cfg.model_name!r}; see timm.list_models() for names (e.g. 'resnet18', "
            "'mobilenetv3_small_100', 'convnext_nano')"
        )
    kwargs: dict[str, Any] = dict(
        features_only=True,
        out_indices=tuple(cfg.out_indices),
        in_chans=in_chans,
        drop_rate=cfg.drop_rate,
        drop_path_rate=cfg.drop_path_rate,
        **cfg.extra_kwargs,
    )
    pretrained = cfg.pretrained
    if isinstance(pretrained, str | os.PathLike) and not isinstance(pretrained, bool):
        path = os.fspath(pretrained)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"pretrained weight file for backbone {cfg.model_name!r} not found: {path}"
            )
        return timm.create_model(
            cfg.model_name, pretrained=True, pretrained_cfg_overlay=dict(file=path), **kwargs
        )
    if not pretrained:
        return timm.create_model(cfg.model_name, pretrained=False, **kwargs)
    try:
        return timm.create_model(cfg.model_name, pretrained=True, **kwargs)
    except (OSError, RuntimeError, ValueError, ConnectionError, ImportError) as err:
        raise PretrainedWeightsError(
            f"could not download pretrained weights for backbone {cfg.model_name!r} ({type(err).__name__}: "
            f"{err}); without internet, pass pretrained='PATH' with a local weight file instead"
        ) from err


def freeze_backbone(backbone: nn.Module) -> nn.Module:
    """Freeze ``backbone`` in place: no gradients, and BatchNorm layers become timm's ``FrozenBatchNorm2d``
    so their statistics stay fixed in ``train()`` mode too. Returns the same module."""
    freeze(backbone)
    return backbone


class PyramidBackbone(nn.Module):
    """Input normalisation, a timm feature backbone and an FPN: images in [0, 1] -> pyramid features.

    Args:
        backbone: a timm model name, a ``FeatureBackboneConfig`` or an already built timm feature extractor
            (anything with ``feature_info.channels()`` / ``.reduction()`` returning a list of feature maps).
        fpn_channels: channels of every pyramid level.
        extra_levels: stride-2 levels added above the backbone's coarsest one (2 gives FCOS's P6, P7).
        in_chans: image channels; 1-channel images are normalised with the mean of the RGB statistics.
        normalize: subtract the backbone's pretraining mean and divide by its std inside ``forward``
            (timm's ``pretrained_cfg``, ImageNet statistics by default).

    ``forward(images Tensor[B, in_chans, H, W] in [0, 1]) -> list[Tensor[B, fpn_channels, H / s, W / s]]``
    for every stride ``s`` in ``self.strides``.
    """

    def __init__(
        self,
        backbone: str | FeatureBackboneConfig | nn.Module,
        fpn_channels: int = 256,
        extra_levels: int = 2,
        in_chans: int = 3,
        normalize: bool = True,
    ) -> None:
        super().__init__()
        self.body = backbone if isinstance(backbone, nn.Module) else build_backbone(backbone, in_chans)
        info = self.body.feature_info
        self.fpn = FPN(info.channels(), info.reduction(), fpn_channels, extra_levels)
        self.strides: tuple[int, ...] = self.fpn.strides
        self.in_chans = int(in_chans)
        cfg = getattr(self.body, "pretrained_cfg", None) or {}
        mean = torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406)), dtype=torch.float32)
        std = torch.tensor(cfg.get("std", (0.229, 0.224, 0.225)), dtype=torch.float32)
        if mean.numel() != in_chans:
            mean, std = mean.mean().expand(in_chans), std.mean().expand(in_chans)
        self.normalize = normalize
        self.register_buffer("pixel_mean", mean.reshape(1, -1, 1, 1).clone(), persistent=False)
        self.register_buffer("pixel_std", std.reshape(1, -1, 1, 1).clone(), persistent=False)

    def forward(self, images: Tensor) -> list[Tensor]:
        if images.dim() != 4 or images.shape[1] != self.in_chans:
            raise ValueError(
                f"expected images of shape [B, {self.in_chans}, H, W], got {tuple(images.shape)}"
            )
        if self.normalize:
            images = (images - self.pixel_mean) / self.pixel_std
        return self.fpn(self.body(images))
