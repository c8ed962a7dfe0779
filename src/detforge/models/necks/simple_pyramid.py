"""ViTDet's simple feature pyramid (Li et al. 2022, "Exploring Plain Vision Transformer Backbones for Object
Detection"): multi-scale maps from the single-stride last feature map of a plain ViT.

Each scale factor has its own branch on the same input map (stride ``s``), as in ViTDet:

- 4: ConvTranspose2d 2x2 stride 2 (C -> C / 2), LayerNorm, GELU, ConvTranspose2d 2x2 stride 2 (-> C / 4);
- 2: one ConvTranspose2d 2x2 stride 2 (C -> C / 2);
- 1: identity (C);
- 0.5: 2x2 max-pool, stride 2 (C).

The default (2, 1, 0.5) turns a stride-16 map into strides 8, 16, 32. ViTDet then applies a 1x1 and a 3x3 conv
(LayerNorm) per level; here the :class:`~detforge.models.necks.FPN` that follows does that (its lateral 1x1 and
output 3x3 convs, plus its top-down sums and extra levels).
"""

from __future__ import annotations

from collections.abc import Sequence

from timm.layers import LayerNorm2d
from torch import Tensor, nn

__all__ = ["SimplePyramid"]

_CHANNEL_DIVISOR = {4.0: 4, 2.0: 2, 1.0: 1, 0.5: 1}


def _branch(channels: int, scale: float) -> nn.Module:
    if scale == 4.0:
        half = channels // 2
        return nn.Sequential(
            nn.ConvTranspose2d(channels, half, 2, stride=2),
            LayerNorm2d(half),
            nn.GELU(),
            nn.ConvTranspose2d(half, channels // 4, 2, stride=2),
        )
    if scale == 2.0:
        return nn.ConvTranspose2d(channels, channels // 2, 2, stride=2)
    if scale == 1.0:
        return nn.Identity()
    return nn.MaxPool2d(2, stride=2)


class SimplePyramid(nn.Module):
    """Feature maps at several strides from one map (ViTDet's simple feature pyramid, without its convs).

    Args:
        in_channels: channels ``C`` of the input map.
        in_stride: its stride ``s`` in pixels (16 for a ViT with 16-pixel patches).
        scale_factors: upsampling factor of each output level, decreasing (finest level first), each one of
            4, 2, 1, 0.5; the output strides are ``s / factor``.

    ``self.channels`` / ``self.strides`` list the output levels' channels and strides.
    ``forward(x Tensor[B, C, H, W]) -> list[Tensor[B, C_j, H * f_j, W * f_j]]`` (the 0.5 level floors odd sizes).
    """

    def __init__(
        self, in_channels: int, in_stride: int, scale_factors: Sequence[float] = (2.0, 1.0, 0.5)
    ) -> None:
        super().__init__()
        scales = [float(f) for f in scale_factors]
        if not scales or any(f not in _CHANNEL_DIVISOR for f in scales):
            raise ValueError(f"scale_factors must each be one of 4, 2, 1, 0.5, got {tuple(scale_factors)}")
        if any(b >= a for a, b in zip(scales, scales[1:])):
            raise ValueError(f"scale_factors must decrease (finest level first), got {tuple(scale_factors)}")
        divisible = all(in_stride % f == 0 for f in scales if f > 1)
        if not divisible or any(in_channels % _CHANNEL_DIVISOR[f] for f in scales):
            raise ValueError(
                f"stride {in_stride} and channels {in_channels} must be divisible by the upsampling factors "
                f"{tuple(f for f in scales if f > 1)}"
            )
        self.in_channels = int(in_channels)
        self.scale_factors: tuple[float, ...] = tuple(scales)
        self.channels: tuple[int, ...] = tuple(in_channels // _CHANNEL_DIVISOR[f] for f in scales)
        self.strides: tuple[int, ...] = tuple(int(in_stride / f) for f in scales)
        self.branches = nn.ModuleList(_branch(self.in_channels, f) for f in scales)

    def forward(self, x: Tensor) -> list[Tensor]:
        """``x``: Tensor[B, in_channels, H, W], the backbone's map at stride ``in_stride``."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"SimplePyramid expects Tensor[B, {self.in_channels}, H, W], got {tuple(x.shape)}"
            )
        return [branch(x) for branch in self.branches]
