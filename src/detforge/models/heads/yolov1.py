"""YOLOv1 head (Redmon et al. 2016): the backbone's last map resampled to an S x S grid, per cell B boxes
``(x, y, sqrt w, sqrt h, confidence)`` and C class probabilities."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from detforge.models.necks.yolov3 import conv_bn_leaky

__all__ = ["YOLOv1Head"]


class YOLOv1Head(nn.Module):
    """Conv head on an S x S grid (the paper's two fully connected layers become convolutions on the grid).

    A 3x3 conv on the backbone's last map, bilinear resampling to S x S (the same grid whatever the input's
    size or shape; an exact 2x2 average from a 2S x 2S map, and exportable to ONNX, unlike adaptive pooling
    to a larger grid), a 3x3 conv mixing neighbouring cells, a 1x1 conv to ``B * 5 + C`` outputs per cell.

    Args:
        in_channels: channels of the backbone's last map.
        num_classes: C; boxes_per_cell: B; grid_size: S; width: hidden channels.

    ``forward(x Tensor[N, in_channels, h, w]) -> Tensor[N, S, S, B * 5 + C]`` logits, per cell the B boxes'
    ``(x, y, sqrt w, sqrt h, confidence)`` then the C class logits (the paper's S x S x (B * 5 + C)).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        boxes_per_cell: int = 2,
        grid_size: int = 7,
        width: int = 256,
    ) -> None:
        super().__init__()
        if grid_size < 1 or boxes_per_cell < 1:
            raise ValueError(f"grid_size and boxes_per_cell must be >= 1, got {grid_size}, {boxes_per_cell}")
        self.grid_size = int(grid_size)
        self.reduce = conv_bn_leaky(in_channels, width, 3)
        self.mix = conv_bn_leaky(width, width, 3)
        self.pred = nn.Conv2d(width, boxes_per_cell * 5 + num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        s = self.grid_size
        x = F.interpolate(self.reduce(x), size=(s, s), mode="bilinear", align_corners=False)  # [N, w, S, S]
        return self.pred(self.mix(x)).permute(0, 2, 3, 1)  # [N, S, S, B * 5 + C]
