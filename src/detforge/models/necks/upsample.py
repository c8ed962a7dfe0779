"""An upsampling neck to one fine output stride (CenterNet's stride 4): a light top-down FPN merge of the
backbone's levels down to the finest, then x2 upsampling stages until the output stride; optionally with
deformable 3x3 convolutions (``torchvision.ops.deform_conv2d``, as CenterNet's DLA-34 + DCN)."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import DeformConv2d

__all__ = ["DeformConv3x3", "UpsampleNeck"]


class DeformConv3x3(nn.Module):
    """A 3x3 deformable convolution (DCNv1, ``torchvision.ops.DeformConv2d``) whose sampling offsets come from
    a 3x3 conv on the same input, initialised to zero: it starts as a plain 3x3 convolution."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = False) -> None:
        super().__init__()
        self.offset = nn.Conv2d(in_channels, 2 * 3 * 3, 3, padding=1)
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)
        self.conv = DeformConv2d(in_channels, out_channels, 3, padding=1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        x = x.contiguous()  # deform_conv2d takes NCHW-contiguous inputs
        return self.conv(x, self.offset(x))  # [B, out, H, W]


def _conv_bn_relu(
    in_channels: int, out_channels: int, kernel: int, deformable: bool = False
) -> nn.Sequential:
    if deformable and kernel == 3:
        conv: nn.Module = DeformConv3x3(in_channels, out_channels)
    else:
        conv = nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


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
        deformable: the 3x3 convs are :class:`DeformConv3x3` (ONNX: ``deform_conv2d`` needs opset 19).

    ``forward(features: list[Tensor[B, C_i, H_i, W_i]]) -> Tensor[B, out_channels, H / out_stride, W /
    out_stride]``; levels finer than ``out_stride`` are ignored.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        in_strides: Sequence[int],
        out_channels: int = 64,
        out_stride: int = 4,
        deformable: bool = False,
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
        self.smooth = nn.ModuleList(
            _conv_bn_relu(out_channels, out_channels, 3, deformable) for _ in range(max(len(used) - 1, 1))
        )  # one per merge; a single level still gets one 3x3 conv after its lateral
        self.up = nn.ModuleList(
            _conv_bn_relu(out_channels, out_channels, 3, deformable) for _ in range(ratio.bit_length() - 1)
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
