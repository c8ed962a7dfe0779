"""YOLOv3 head: one 1x1 conv per level predicting ``(tx, ty, tw, th, objectness, C classes)`` per anchor."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["YOLOv3Head"]


class YOLOv3Head(nn.Module):
    """Per-level 1x1 prediction convs; layers only (decoding with the anchors is the model's).

    Args:
        in_channels: channels of each level (the neck's ``out_channels``), finest first.
        num_classes: object classes (independent sigmoids).
        num_anchors: anchors per level (3).
        prior_prob: initial objectness and class probability (bias init).

    ``forward(features: list[Tensor[B, C_l, H_l, W_l]])`` returns ``raw`` Tensor[B, P, 5 + C], P = sum of
    H_l * W_l * num_anchors, levels concatenated, row-major inside a level, the anchors of a cell
    consecutive (:func:`detforge.boxes.anchor_grid`'s order), channels ``tx, ty, tw, th, obj, classes``; and
    ``feat_sizes`` (list of (H_l, W_l)).
    """

    def __init__(
        self, in_channels: Sequence[int], num_classes: int, num_anchors: int = 3, prior_prob: float = 0.01
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.num_anchors = int(num_anchors)
        outputs = self.num_anchors * (5 + self.num_classes)
        self.preds = nn.ModuleList(nn.Conv2d(int(c), outputs, 1) for c in in_channels)
        bias = -math.log((1 - prior_prob) / prior_prob)
        for conv in self.preds:
            b = conv.bias.detach().view(self.num_anchors, 5 + self.num_classes)
            b[:, :4] = 0.0
            b[:, 4:] = bias

    def forward(self, features: Sequence[Tensor]) -> tuple[Tensor, list[tuple[int, int]]]:
        if len(features) != len(self.preds):
            raise ValueError(f"YOLOv3Head has {len(self.preds)} levels, got {len(features)} feature maps")
        per_level, feat_sizes = [], []
        a, n = self.num_anchors, 5 + self.num_classes
        for conv, x in zip(self.preds, features):
            out = conv(x)  # [B, A * (5 + C), H, W]
            feat_sizes.append((int(out.shape[-2]), int(out.shape[-1])))
            out = out.unflatten(1, (a, n)).permute(0, 3, 4, 1, 2).flatten(1, 3)  # [B, HWA, 5 + C]
            per_level.append(out)
        return torch.cat(per_level, dim=1), feat_sizes  # [B, P, 5 + C]
