"""SSDlite's prediction head (MobileNetV2 paper, section 6.2): per level a depthwise 3x3 conv (BatchNorm,
ReLU6) and a 1x1 conv to ``anchors x columns`` outputs, for the class scores and for the box deltas."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from detforge.models.ssd.extractor import conv_bn_relu6, normal_init

__all__ = ["SSDLiteHead", "prediction_block"]


def prediction_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """Depthwise 3x3 (BN, ReLU6) then a 1x1 conv with bias: Tensor[B, in, H, W] -> Tensor[B, out, H, W]."""
    return nn.Sequential(
        conv_bn_relu6(in_channels, in_channels, 3, groups=in_channels),
        nn.Conv2d(in_channels, out_channels, 1),
    )


def _flatten(maps: list[Tensor], columns: int) -> Tensor:
    """Per-level outputs Tensor[B, A_l * K, H_l, W_l] -> Tensor[B, sum H_l W_l A_l, K], ordered (level, row,
    column, anchor), as the default boxes."""
    b = maps[0].shape[0]
    return torch.cat([m.permute(0, 2, 3, 1).reshape(b, -1, columns) for m in maps], dim=1)


class SSDLiteHead(nn.Module):
    """Class logits and box deltas of every default box.

    Args:
        in_channels: channels of each feature map.
        num_anchors: default boxes per location of each map.
        num_columns: class logits per box (the classes plus the background, index 0).
        background_prior: the background probability every box starts at (the background column's bias,
            ``log(p C / (1 - p))`` over C classes: the prior-probability initialisation of RetinaNet, for a
            softmax); None: torchvision's zero biases, every column ``1 / num_columns``.

    Weights are initialised as torchvision's SSDlite (normal, std 0.03; zero biases) either way.
    ``forward(maps) -> (cls_logits Tensor[B, A, num_columns], bbox_regression Tensor[B, A, 4])``.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_anchors: Sequence[int],
        num_columns: int,
        background_prior: float | None = None,
    ) -> None:
        super().__init__()
        if len(in_channels) != len(num_anchors):
            raise ValueError(
                f"{len(in_channels)} feature maps but default boxes for {len(num_anchors)} levels"
            )
        self.num_columns = int(num_columns)
        self.cls_blocks = nn.ModuleList(
            prediction_block(c, a * self.num_columns) for c, a in zip(in_channels, num_anchors)
        )
        self.box_blocks = nn.ModuleList(prediction_block(c, a * 4) for c, a in zip(in_channels, num_anchors))
        normal_init(self)
        if background_prior is not None:
            if not 0.0 < background_prior < 1.0:
                raise ValueError(f"background_prior must be in (0, 1) or None, got {background_prior}")
            bias = math.log(background_prior * (self.num_columns - 1) / (1.0 - background_prior))
            with torch.no_grad():
                for block in self.cls_blocks:
                    block[1].bias.view(-1, self.num_columns)[:, 0] = bias  # [A, C + 1]: column 0 per box

    def forward(self, maps: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        cls_logits = _flatten([block(x) for block, x in zip(self.cls_blocks, maps)], self.num_columns)
        deltas = _flatten([block(x) for block, x in zip(self.box_blocks, maps)], 4)
        return cls_logits, deltas  # [B, A, C + 1], [B, A, 4]
