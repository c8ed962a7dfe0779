"""RetinaNet's head (Lin et al. 2017): a classification and a box subnet shared over every pyramid level."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, get_args

import torch
from torch import Tensor, nn

__all__ = ["RetinaNetHead", "RetinaNetNorm"]

RetinaNetNorm = Literal["none", "GN"]
"""Normalisation in the subnets: "none" (the paper, torchvision's v1: convolutions with bias) or "GN"
(GroupNorm, 32 groups, fewer for narrow heads: torchvision's v2; convolutions without bias)."""


def _subnet(channels: int, num_convs: int, norm: str) -> nn.Sequential:
    """``num_convs`` blocks of (3x3 conv, norm or Identity, ReLU), named ``{i}.0`` / ``{i}.1`` as torchvision's
    ``Conv2dNormActivation`` layers, so its weights map one to one."""
    blocks = []
    for _ in range(num_convs):
        conv = nn.Conv2d(channels, channels, 3, padding=1, bias=norm == "none")
        groups = math.gcd(32, max(channels // 2, 1))  # 32 for 256 channels: torchvision's GroupNorm(32)
        normalise = nn.GroupNorm(groups, channels) if norm == "GN" else nn.Identity()
        blocks.append(nn.Sequential(conv, normalise, nn.ReLU(inplace=True)))
    return nn.Sequential(*blocks)


class RetinaNetHead(nn.Module):
    """Class logits and box deltas for every anchor of every level.

    Args:
        in_channels: channels of every input level (the FPN's).
        num_anchors: anchors per location (sizes x aspect ratios: 9).
        num_classes: object classes (sigmoid per class, no background class).
        num_convs: 3x3 conv blocks in each subnet (4 in the paper).
        norm: :data:`RetinaNetNorm`.
        prior_prob: initial foreground probability of every class (the focal-loss initialisation).

    ``forward(features: list[Tensor[B, in_channels, H_l, W_l]])`` returns a dict:

    - ``cls_logits``: Tensor[B, P, num_classes], P = sum of H_l * W_l * num_anchors, levels concatenated,
      ordered (row, column, anchor) inside a level (the anchors' order, :class:`AnchorGenerator`);
    - ``bbox_regression``: Tensor[B, P, 4] deltas ``(dx, dy, dw, dh)`` from each anchor
      (:class:`~detforge.boxes.AnchorBoxCoder`);
    - ``feat_sizes``: list of (H_l, W_l).
    """

    def __init__(
        self,
        in_channels: int,
        num_anchors: int,
        num_classes: int,
        num_convs: int = 4,
        norm: RetinaNetNorm = "none",
        prior_prob: float = 0.01,
    ) -> None:
        super().__init__()
        if norm not in get_args(RetinaNetNorm):
            raise ValueError(f"head_norm must be one of {get_args(RetinaNetNorm)}, got {norm!r}")
        if num_classes < 1 or num_anchors < 1 or num_convs < 0:
            raise ValueError(
                f"need num_classes >= 1, num_anchors >= 1, num_convs >= 0; got {num_classes}, {num_anchors}, "
                f"{num_convs}"
            )
        if not 0.0 < prior_prob < 1.0:
            raise ValueError(f"prior_prob must be in (0, 1), got {prior_prob}")
        self.num_classes, self.num_anchors = int(num_classes), int(num_anchors)
        self.cls_subnet = _subnet(in_channels, num_convs, norm)
        self.box_subnet = _subnet(in_channels, num_convs, norm)
        self.cls_logits = nn.Conv2d(in_channels, num_anchors * num_classes, 3, padding=1)
        self.bbox_reg = nn.Conv2d(in_channels, num_anchors * 4, 3, padding=1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, features: Sequence[Tensor]) -> dict[str, Tensor | list[tuple[int, int]]]:
        logits, deltas, feat_sizes = [], [], []
        for x in features:
            b = x.shape[0]
            # [B, A * K, H, W] -> [B, H, W, A * K] -> [B, H * W * A, K]: channel a * K + k is anchor a, entry k
            logits.append(
                self.cls_logits(self.cls_subnet(x)).permute(0, 2, 3, 1).reshape(b, -1, self.num_classes)
            )
            deltas.append(self.bbox_reg(self.box_subnet(x)).permute(0, 2, 3, 1).reshape(b, -1, 4))
            feat_sizes.append((int(x.shape[-2]), int(x.shape[-1])))
        return {
            "cls_logits": torch.cat(logits, dim=1),  # [B, P, C]
            "bbox_regression": torch.cat(deltas, dim=1),  # [B, P, 4]
            "feat_sizes": feat_sizes,
        }
