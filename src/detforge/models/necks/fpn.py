"""Feature pyramid network over torchvision's ``FeaturePyramidNetwork``, with P6/P7-style extra levels."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock

__all__ = ["FPN"]


class _ExtraLevels(ExtraFPNBlock):
    """``num_levels`` stride-2 3x3 convs on the last FPN output (FCOS's "P5" variant): P6 = conv(P5),
    P7 = conv(relu(P6)), ...; with ``input_channels`` the first conv reads the last backbone map instead
    (RetinaNet's "C5" variant: P6 = conv(C5))."""

    def __init__(self, channels: int, num_levels: int, input_channels: int | None = None) -> None:
        super().__init__()
        self.from_input = input_channels is not None
        first = channels if input_channels is None else input_channels
        self.convs = nn.ModuleList(
            nn.Conv2d(first if i == 0 else channels, channels, 3, stride=2, padding=1)
            for i in range(num_levels)
        )
        for conv in self.convs:
            nn.init.kaiming_uniform_(conv.weight, a=1)
            nn.init.zeros_(conv.bias)

    def forward(
        self, results: list[Tensor], x: list[Tensor], names: list[str]
    ) -> tuple[list[Tensor], list[str]]:
        last = x[-1] if self.from_input else results[-1]
        for i, conv in enumerate(self.convs):
            last = conv(last if i == 0 else F.relu(last))
            results.append(last)
            names.append(f"extra{i}")
        return results, names


class FPN(nn.Module):
    """Top-down feature pyramid with optional extra coarser levels.

    Args:
        in_channels: channels of each input level, finest first (``backbone.feature_info.channels()``).
        in_strides: stride of each input level in pixels, finest first (``backbone.feature_info.reduction()``).
        out_channels: channels of every output level.
        extra_levels: coarser levels added on top of the last output, each a stride-2 conv (stride x2).
        norm_layer: normalisation after every FPN convolution (torchvision's ``norm_layer``, e.g.
            ``nn.BatchNorm2d``: the convolutions then have no bias); None: none, convolutions with bias.
        allow_equal_strides: accept consecutive input levels of the same stride (torchvision's
            MobileNetV3-FPN: two stride-32 maps; the top-down upsampling is then the identity).
        extra_from: what the first extra level convolves: "fpn" the last FPN output (P6 = conv(P5): FCOS,
            torchvision's RetinaNet), "backbone" the last input map (P6 = conv(C5): the RetinaNet paper,
            torchvision's RetinaNet v2).

    ``forward(features: list[Tensor[B, C_i, H_i, W_i]]) -> list[Tensor[B, out_channels, H_j, W_j]]`` with
    ``len(in_channels) + extra_levels`` outputs; ``self.strides`` holds their strides.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        in_strides: Sequence[int],
        out_channels: int = 256,
        extra_levels: int = 0,
        norm_layer: Callable[..., nn.Module] | None = None,
        allow_equal_strides: bool = False,
        extra_from: Literal["fpn", "backbone"] = "fpn",
    ) -> None:
        super().__init__()
        in_channels, in_strides = [int(c) for c in in_channels], [int(s) for s in in_strides]
        if not in_channels or len(in_channels) != len(in_strides):
            raise ValueError(
                f"FPN needs one stride per input level: got {len(in_channels)} channels, {len(in_strides)} strides"
            )
        if any(b < a or (b == a and not allow_equal_strides) for a, b in zip(in_strides, in_strides[1:])):
            raise ValueError(f"FPN input strides must increase (finest level first), got {in_strides}")
        if extra_levels < 0:
            raise ValueError(f"extra_levels must be >= 0, got {extra_levels}")
        self.in_channels = in_channels
        self.out_channels = int(out_channels)
        self.strides: tuple[int, ...] = tuple(in_strides) + tuple(
            in_strides[-1] * 2 ** (i + 1) for i in range(extra_levels)
        )
        if extra_from not in ("fpn", "backbone"):
            raise ValueError(f"extra_from must be 'fpn' or 'backbone', got {extra_from!r}")
        first = in_channels[-1] if extra_from == "backbone" else None
        extra = _ExtraLevels(self.out_channels, extra_levels, first) if extra_levels else None
        self.fpn = FeaturePyramidNetwork(
            in_channels, self.out_channels, extra_blocks=extra, norm_layer=norm_layer
        )
        self._names = [str(i) for i in range(len(in_channels))]

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        """``features``: one Tensor[B, C_i, H_i, W_i] per input level, finest first."""
        if len(features) != len(self.in_channels):
            raise ValueError(f"FPN expects {len(self.in_channels)} feature maps, got {len(features)}")
        out = self.fpn(OrderedDict(zip(self._names, features)))
        return list(out.values())
