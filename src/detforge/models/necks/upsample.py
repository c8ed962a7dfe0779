"""An upsampling neck to one fine output stride (CenterNet's stride 4): a light top-down FPN merge of the
backbone's levels down to the finest, then x2 upsampling stages until the output stride."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["UpsampleNeck"]


def _conv_bn_relu(in_channels: int, out_channels: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class UpsampleNeck(nn.Module):
    """Backbone levels (finest first) -> one map at ``out_stride``.

    Every level at or above ``out_stride`` gets a 1x1 lateral conv; from the coarsest down, the running map
    is upsampled (nearest) to the next finer level's size, added to its lateral and smoothed by a 3x3 conv
    (BatchNorm, ReLU). When the finest level used is coarser than ``out_stride`` (e.g. stride 8), x2
    nearest upsampling + 3x3 conv stages follow. Every layer is used in every forward (no unused parameters
    under DDP).

    Args:
        in_channels: channels of each input level (``feature_info.channels()``).
        in_strides: stride of each input level, increasing (``feature_info.reduction()``).
        out_channels: channels of the output map (and of every merge).
        out_stride: stride of the output map; ``in_strides`` must be ``out_stride`` times powers of two from
            the first level used on.

    ``forward(features: list[Tensor[B, C_i, H_i, W_i]]) -> Tensor[B, out_channels, H / out_stride, W /
    out_stride]``; levels finer than ``out_stride`` are ignored.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        in_strides: Sequence[int],
        out_channels: int = 64,
        out_stride: int = 4,
    ) -> None:
        super().__init__()
        channels, strides = [int(c) for c in in_channels], [int(s) for s in in_strides]
        if not channels or len(channels) != len(strides):
            raise ValueError(f"got {len(channels)} channels for {len(strides)} strides")
        if any(b <= a for a, b in zip(strides, strides[1:])):
            raise ValueError(f"input strides must increase (finest level first), got {strides}")
        self.first = next((i for i, s in enumerate(strides) if s >= out_stride), None)
        if self.first is None:
            raise ValueError(f"no input level at or above out_stride {out_stride} (strides {strides})")
        used = strides[self.first :]
        ratio = used[0] // out_stride
        if used[0] % out_stride or ratio & (ratio - 1):
            raise ValueError(f"the finest level used (stride {used[0]}) is not out_stride {out_stride} x 2^k")
        self.out_channels = int(out_channels)
        self.out_stride = int(out_stride)
        self.lateral = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))
            for c in channels[self.first :]
        )
        self.smooth = nn.ModuleList(_conv_bn_relu(out_channels, out_channels, 3) for _ in used[:-1])
        if len(used) == 1:  # a single level: still one 3x3 conv after its lateral
            self.smooth.append(_conv_bn_relu(out_channels, out_channels, 3))
        self.up = nn.ModuleList(
            _conv_bn_relu(out_channels, out_channels, 3) for _ in range(ratio.bit_length() - 1)
        )

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        features = list(features)[self.first :]
        if len(features) != len(self.lateral):
            raise ValueError(f"UpsampleNeck expects {len(self.lateral) + self.first} feature maps")
        x = self.lateral[-1](features[-1])  # [B, out, H_L, W_L]
        for i in range(len(features) - 2, -1, -1):
            lateral = self.lateral[i](features[i])  # [B, out, H_i, W_i]
            x = F.interpolate(x, size=lateral.shape[-2:], mode="nearest") + lateral
            x = self.smooth[i](x)
        if len(features) == 1:
            x = self.smooth[0](x)
        for conv in self.up:
            x = conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))  # [B, out, 2 H, 2 W]
        return x
