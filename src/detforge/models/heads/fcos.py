"""FCOS head (Tian et al. 2019): one set of towers shared over all pyramid levels."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["BoxActivation", "FCOSHead", "FCOSNorm"]

FCOSNorm = Literal["GN", "BN", "none"]
_NORMS = ("GN", "BN", "none")
BoxActivation = Literal["exp", "relu"]
"""How the box branch's output ``x`` becomes side distances: ``exp(scale_l * x) * stride_l`` with a learnable
``scale_l`` per level (FCOS), or ``relu(x) * stride_l`` (torchvision's FCOS: no per-level scale)."""
_BOX_ACTIVATIONS = ("exp", "relu")


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "GN":  # 32 groups as in FCOS, fewer for narrow heads so every group has >= 2 channels
        return nn.GroupNorm(math.gcd(32, max(channels // 2, 1)), channels)
    if kind == "BN":
        return nn.BatchNorm2d(channels)
    return nn.Identity()


def _tower(channels: int, num_convs: int, norm: str, conv_bias: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(num_convs):
        bias = conv_bias or norm == "none"
        layers += [nn.Conv2d(channels, channels, 3, padding=1, bias=bias), _norm(norm, channels)]
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class FCOSHead(nn.Module):
    """Classification, box and centerness predictions for every location of every level.

    Args:
        in_channels: channels of every input level (the FPN's ``out_channels``).
        num_classes: object classes (no background class; sigmoid per class).
        strides: stride of each level in pixels; the box branch predicts distances in units of the stride.
        num_convs: 3x3 conv layers in each of the classification and box towers.
        prior_prob: initial foreground probability of the classifier (focal-loss initialisation).
        norm: normalisation in the towers: "GN" (32 groups, fewer below 64 channels), "BN" or "none".
        centerness_on_reg: centerness branch on the box tower (True, FCOS-imprv) or the class tower.
        box_activation: "exp" (``exp(scale_l * x) * stride_l``, a learnable ``scales`` entry per level) or
            "relu" (``relu(x) * stride_l``, no ``scales``: torchvision's FCOS, whose stride_l is the anchor size).
        conv_bias: the tower convolutions have a bias before their normalisation (torchvision's FCOS); they
            always have one with ``norm="none"``.

    ``forward(features: list[Tensor[B, in_channels, H_l, W_l]])`` returns a dict:

    - ``cls_logits``: Tensor[B, P, num_classes], P = sum of H_l * W_l, levels concatenated, row-major inside
      a level (the order of :class:`detforge.assigners.fcos.FCOSAssigner`);
    - ``box_reg``: Tensor[B, P, 4] distances ``(l, t, r, b)`` in pixels from the location to the box edges,
      ``exp(scale_l * x) * stride_l`` with a learnable ``scale_l`` per level, or ``relu(x) * stride_l``;
    - ``centerness``: Tensor[B, P] logits;
    - ``feat_sizes``: list of (H_l, W_l).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        strides: Sequence[int],
        num_convs: int = 4,
        prior_prob: float = 0.01,
        norm: FCOSNorm = "GN",
        centerness_on_reg: bool = True,
        box_activation: BoxActivation = "exp",
        conv_bias: bool = False,
    ) -> None:
        super().__init__()
        if norm not in _NORMS:
            raise ValueError(f"norm must be one of {_NORMS}, got {norm!r}")
        if box_activation not in _BOX_ACTIVATIONS:
            raise ValueError(f"box_activation must be one of {_BOX_ACTIVATIONS}, got {box_activation!r}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if not 0.0 < prior_prob < 1.0:
            raise ValueError(f"prior_prob must be in (0, 1), got {prior_prob}")
        self.num_classes = int(num_classes)
        self.strides = tuple(int(s) for s in strides)
        self.centerness_on_reg = centerness_on_reg
        self.box_activation = box_activation
        self.cls_tower = _tower(in_channels, num_convs, norm, conv_bias)
        self.box_tower = _tower(in_channels, num_convs, norm, conv_bias)
        self.cls_logits = nn.Conv2d(in_channels, num_classes, 3, padding=1)
        self.box_reg = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.centerness = nn.Conv2d(in_channels, 1, 3, padding=1)
        if box_activation == "exp":
            self.scales = nn.Parameter(torch.ones(len(self.strides)))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, features: Sequence[Tensor]) -> dict[str, Tensor | list[tuple[int, int]]]:
        if len(features) != len(self.strides):
            raise ValueError(f"FCOSHead has {len(self.strides)} levels, got {len(features)} feature maps")
        per_level = []
        feat_sizes = []
        if self.centerness_on_reg:  # box and centerness convs read the same features: run them as one conv
            box_ctr_weight = torch.cat([self.box_reg.weight, self.centerness.weight])  # [5, C_in, 3, 3]
            box_ctr_bias = torch.cat([self.box_reg.bias, self.centerness.bias])  # [5]
        for level, (x, stride) in enumerate(zip(features, self.strides)):
            cls_feat = self.cls_tower(x)  # [B, C_in, H, W]
            box_feat = self.box_tower(x)  # [B, C_in, H, W]
            if self.centerness_on_reg:
                box_ctr = F.conv2d(box_feat, box_ctr_weight, box_ctr_bias, padding=1)  # [B, 5, H, W]
                box, ctr = box_ctr[:, :4], box_ctr[:, 4:]  # [B, 4, H, W], [B, 1, H, W]
            else:
                box, ctr = self.box_reg(box_feat), self.centerness(cls_feat)
            if self.box_activation == "relu":
                dist = F.relu(box) * stride  # [B, 4, H, W]
            else:  # exp of a clamped input: distances stay finite even if a level's scale runs away.
                dist = (self.scales[level] * box).clamp(max=20.0).exp() * stride  # [B, 4, H, W]
            out = torch.cat([self.cls_logits(cls_feat), dist, ctr], dim=1)  # [B, C + 5, H, W]
            per_level.append(out.flatten(2))  # [B, C + 5, HW]
            feat_sizes.append((int(x.shape[-2]), int(x.shape[-1])))
        flat = torch.cat(per_level, dim=2).permute(0, 2, 1)  # [B, P, C + 5]
        c = self.num_classes
        return {
            "cls_logits": flat[..., :c],  # [B, P, C]
            "box_reg": flat[..., c : c + 4],  # [B, P, 4]
            "centerness": flat[..., c + 4],  # [B, P]
            "feat_sizes": feat_sizes,
        }
