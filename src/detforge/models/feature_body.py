"""A timm feature backbone with input normalisation and no neck: what the grid detectors (YOLOv1, YOLOv3)
put their own neck or head on.

``FeatureBody(backbone)(images in [0, 1]) -> list[Tensor[B, C_i, H / s_i, W / s_i]]``, NCHW, finest first;
``channels`` and ``strides`` come from the backbone's ``feature_info``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from detforge.models.backbone import FeatureBackboneConfig, build_backbone

__all__ = ["FeatureBody"]


class FeatureBody(nn.Module):
    """Normalisation (the backbone's pretraining mean / std) + a timm ``features_only`` model.

    Args:
        backbone: timm model name, ``FeatureBackboneConfig`` or a built timm feature extractor.
        in_chans: image channels; 1-channel images use the mean of the RGB statistics.
        input_size: (h, w) a fixed-size timm model (ViT, Swin) is built for.

    Attributes:
        body: the timm feature extractor (what ``freeze_backbone`` freezes).
        channels, strides: per returned level, finest first (``feature_info``).
    """

    def __init__(
        self,
        backbone: str | FeatureBackboneConfig | nn.Module,
        in_chans: int = 3,
        input_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.body = (
            backbone if isinstance(backbone, nn.Module) else build_backbone(backbone, in_chans, input_size)
        )
        info = self.body.feature_info
        self.channels = tuple(int(c) for c in info.channels())
        self.strides = tuple(int(s) for s in info.reduction())
        fmt = getattr(self.body, "output_fmt", "NCHW")
        self.channels_last_features = str(getattr(fmt, "value", fmt)) == "NHWC"
        self.in_chans = int(in_chans)
        cfg = getattr(self.body, "pretrained_cfg", None) or {}
        mean = torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406)), dtype=torch.float32)
        std = torch.tensor(cfg.get("std", (0.229, 0.224, 0.225)), dtype=torch.float32)
        if mean.numel() != in_chans:
            mean, std = mean.mean().expand(in_chans), std.mean().expand(in_chans)
        self.register_buffer("pixel_mean", mean.reshape(1, -1, 1, 1).clone(), persistent=False)
        self.register_buffer("pixel_std", std.reshape(1, -1, 1, 1).clone(), persistent=False)

    def forward(self, images: Tensor) -> list[Tensor]:
        if images.dim() != 4 or images.shape[1] != self.in_chans:
            raise ValueError(
                f"expected images of shape [B, {self.in_chans}, H, W], got {tuple(images.shape)}"
            )
        features = self.body((images - self.pixel_mean) / self.pixel_std)
        if self.channels_last_features:
            features = [f.permute(0, 3, 1, 2) for f in features]  # [B, C_i, H_i, W_i]
        return list(features)
