"""Building blocks shared by the edge detectors: conv-BN-activation, depthwise-separable convs, CSP blocks,
per-level scales and location grids.

Everything here is a plain layer or a pure function; no block keeps state between calls.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

__all__ = [
    "ConvBNAct",
    "CSPBlock",
    "DepthwiseSeparable",
    "LearnedScale",
    "count_parameters",
    "level_points",
]

Activation = Literal["relu", "silu", "none"]
_ACTIVATIONS = ("relu", "silu", "none")


def _activation(name: str) -> nn.Module:
    if name not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {_ACTIVATIONS}, got {name!r}")
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "silu":
        return nn.SiLU(inplace=True)
    return nn.Identity()


class ConvBNAct(nn.Sequential):
    """Conv2d (no bias) + BatchNorm2d + activation; 'same' padding for odd kernels at any dilation."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        activation: Activation = "relu",
    ) -> None:
        padding = dilation * (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride=stride,
                padding=padding,
                dilation=dilation,
                groups=groups,
                bias=False,
            ),
            nn.BatchNorm2d(out_channels),
            _activation(activation),
        )


class DepthwiseSeparable(nn.Sequential):
    """Depthwise 3x3 (stride, dilation) + pointwise 1x1, each with BN and activation (MobileNet v1 block)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        stride: int = 1,
        dilation: int = 1,
        activation: Activation = "relu",
    ) -> None:
        super().__init__(
            ConvBNAct(
                in_channels,
                in_channels,
                kernel_size=3,
                stride=stride,
                dilation=dilation,
                groups=in_channels,
                activation=activation,
            ),
            ConvBNAct(in_channels, out_channels, kernel_size=1, activation=activation),
        )


class _Bottleneck(nn.Module):
    """Residual 1x1 -> depthwise 3x3 -> 1x1 bottleneck used inside ``CSPBlock``."""

    def __init__(self, channels: int, activation: Activation) -> None:
        super().__init__()
        self.body = nn.Sequential(
            ConvBNAct(channels, channels, kernel_size=1, activation=activation),
            ConvBNAct(channels, channels, kernel_size=3, groups=channels, activation=activation),
            ConvBNAct(channels, channels, kernel_size=1, activation="none"),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class CSPBlock(nn.Module):
    """Cross-stage-partial block: half the channels go through ``depth`` bottlenecks, half skip, then merge.

    ``forward(x Tensor[B, in, H, W]) -> Tensor[B, out, H, W]``.
    """

    def __init__(
        self, in_channels: int, out_channels: int, *, depth: int = 1, activation: Activation = "silu"
    ) -> None:
        super().__init__()
        hidden = max(out_channels // 2, 8)
        self.main = ConvBNAct(in_channels, hidden, kernel_size=1, activation=activation)
        self.shortcut = ConvBNAct(in_channels, hidden, kernel_size=1, activation=activation)
        self.blocks = nn.Sequential(*[_Bottleneck(hidden, activation) for _ in range(depth)])
        self.merge = ConvBNAct(2 * hidden, out_channels, kernel_size=1, activation=activation)

    def forward(self, x: Tensor) -> Tensor:
        main = self.blocks(self.main(x))  # [B, hidden, H, W]
        return self.merge(torch.cat([main, self.shortcut(x)], dim=1))  # [B, out, H, W]


class LearnedScale(nn.Module):
    """A single learnable multiplier (FCOS's per-level scale on the shared regression head)."""

    def __init__(self, init: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(init)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


def level_points(
    feat_sizes: list[tuple[int, int]], strides: list[int], device: torch.device | None = None
) -> tuple[Tensor, Tensor]:
    """Centres of every feature-map cell of every level, in input pixels.

    Args:
        feat_sizes: (h, w) per level.
        strides: input pixels per cell, per level.

    Returns:
        points (Tensor[P, 2] float32, (x, y) = ((col + 0.5) * stride, (row + 0.5) * stride)), and
        point_strides (Tensor[P] float32); P = sum(h * w), levels concatenated, row-major inside a level.
    """
    all_points, all_strides = [], []
    for (h, w), s in zip(feat_sizes, strides, strict=True):
        ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * s
        xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * s
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        all_points.append(torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1))  # [h*w, 2]
        all_strides.append(torch.full((h * w,), float(s), device=device))
    return torch.cat(all_points), torch.cat(all_strides)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
