"""YOLOv3's neck (Redmon & Farhadi 2018): top-down, upsampling and concatenation (not FPN's addition).

From the coarsest level down: a conv set (alternating 1x1 and 3x3 convs, darknet's five), its output goes to
the head through a 3x3 conv; a lateral 1x1 conv halves its channels, 2x nearest upsampling brings it to the
next finer level, where it is concatenated with the backbone's map and goes through the next conv set.
Conv + BatchNorm + LeakyReLU(0.1) throughout, as darknet.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["YOLOv3Neck"]


def conv_bn_leaky(c_in: int, c_out: int, k: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.1)
    )


def _conv_set(c_in: int, width: int, num_convs: int) -> nn.Sequential:
    """``num_convs`` convs alternating 1x1 (``width``) and 3x3 (``2 * width``), starting and ending with 1x1."""
    layers, c = [], c_in
    for i in range(num_convs):
        out, k = (width, 1) if i % 2 == 0 else (2 * width, 3)
        layers.append(conv_bn_leaky(c, out, k))
        c = out
    return nn.Sequential(*layers)


class YOLOv3Neck(nn.Module):
    """Top-down neck over the backbone's levels.

    Args:
        in_channels: channels of each input level, finest first (``feature_info.channels()``).
        width: conv-set width at the coarsest level; each finer level has half the previous (darknet: 512,
            256, 128); never below 8.
        num_convs: convs in each conv set, odd (darknet: 5).

    ``forward(features: list[Tensor[B, C_i, H_i, W_i]]) -> list[Tensor[B, out_channels[i], H_i, W_i]]``,
    finest first; ``out_channels[i] = 2 * width_i`` (the output 3x3 conv).
    """

    def __init__(self, in_channels: Sequence[int], width: int = 512, num_convs: int = 5) -> None:
        super().__init__()
        if num_convs < 1 or num_convs % 2 == 0:
            raise ValueError(f"neck_num_convs must be odd and >= 1, got {num_convs}")
        if width < 8:
            raise ValueError(f"neck_width must be >= 8, got {width}")
        n = len(in_channels)
        widths = [max(8, int(width) >> (n - 1 - i)) for i in range(n)]  # finest first
        self.in_channels = [int(c) for c in in_channels]
        self.out_channels = [2 * w for w in widths]
        self.sets = nn.ModuleList()
        self.outputs = nn.ModuleList()
        self.laterals = nn.ModuleList()
        for i in reversed(range(n)):  # coarsest first
            extra = widths[i + 1] // 2 if i < n - 1 else 0  # the upsampled lateral from the coarser level
            self.sets.append(_conv_set(self.in_channels[i] + extra, widths[i], num_convs))
            self.outputs.append(conv_bn_leaky(widths[i], 2 * widths[i], 3))
            if i > 0:
                self.laterals.append(conv_bn_leaky(widths[i], widths[i] // 2, 1))

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        if len(features) != len(self.in_channels):
            raise ValueError(f"YOLOv3Neck expects {len(self.in_channels)} feature maps, got {len(features)}")
        outs: list[Tensor] = []
        x = None
        for j, feat in enumerate(reversed(list(features))):  # coarsest first
            if x is not None:
                up = F.interpolate(self.laterals[j - 1](x), size=feat.shape[-2:], mode="nearest")
                feat = torch.cat([up, feat], dim=1)  # [B, C_i + w / 2, H_i, W_i]
            x = self.sets[j](feat)  # [B, w_i, H_i, W_i]
            outs.append(self.outputs[j](x))  # [B, 2 w_i, H_i, W_i]
        return outs[::-1]
