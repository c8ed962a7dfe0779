"""Frozen BatchNorm as one fused multiply-add in the input's dtype.

timm's ``freeze`` turns BatchNorm layers into torchvision's ``FrozenBatchNorm2d`` and timm's
``FrozenBatchNormAct2d``, whose forward is ``x * scale + bias``: two passes over the feature map, and under
bfloat16 autocast a float32 result (the float32 buffers promote the bfloat16 convolution output), so every
frozen layer writes float32 and the next convolution casts it back. The subclasses here compute the same
``scale`` and ``shift`` (Tensor[C], from the float32 buffers) and apply them with one ``torch.addcmul`` in the
input's dtype. They add no state: same buffers, same state dict, and timm's ``unfreeze`` still turns them back
into training BatchNorm (it checks ``isinstance`` against the parents).
"""

from __future__ import annotations

import torch
from timm.layers import FrozenBatchNormAct2d
from torch import Tensor, nn
from torchvision.ops.misc import FrozenBatchNorm2d

__all__ = ["FusedFrozenBatchNorm2d", "FusedFrozenBatchNormAct2d", "fuse_frozen_batchnorm"]


def _affine(norm: nn.Module, x: Tensor) -> Tensor:
    """``x`` (Tensor[B, C, H, W]) normalised with ``norm``'s fixed statistics and affine: one pass, x's dtype."""
    scale = norm.weight * (norm.running_var + norm.eps).rsqrt()  # [C]
    shift = norm.bias - norm.running_mean * scale  # [C]
    return torch.addcmul(shift.to(x.dtype)[:, None, None], x, scale.to(x.dtype)[:, None, None])  # [B, C, H, W]


class FusedFrozenBatchNorm2d(FrozenBatchNorm2d):
    """torchvision's ``FrozenBatchNorm2d`` applied as one ``addcmul`` in the input's dtype."""

    def forward(self, x: Tensor) -> Tensor:
        return _affine(self, x)


class FusedFrozenBatchNormAct2d(FrozenBatchNormAct2d):
    """timm's ``FrozenBatchNormAct2d`` (BatchNorm + dropout + activation) with the fused affine."""

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.drop(_affine(self, x)))


_FUSED = {FrozenBatchNorm2d: FusedFrozenBatchNorm2d, FrozenBatchNormAct2d: FusedFrozenBatchNormAct2d}


def fuse_frozen_batchnorm(module: nn.Module) -> int:
    """Give every ``FrozenBatchNorm2d`` / ``FrozenBatchNormAct2d`` in ``module`` (itself included) the fused
    forward, in place (the subclasses hold the same attributes); returns how many changed."""
    changed = 0
    for child in module.modules():
        fused = _FUSED.get(type(child))
        if fused is not None:
            child.__class__ = fused
            changed += 1
    return changed
