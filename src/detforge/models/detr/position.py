"""DETR's sine positional encoding of a feature map (Carion et al. 2020; "Attention is all you need"'s sines,
in 2-D), aware of padding: positions are counted over each image's real (unpadded) cells and normalised by
its own height and width, so an image padded in a batch gets the same encoding as the image alone.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["SinePositionEncoding", "padding_mask"]


def padding_mask(real_hw: Tensor, height: int, width: int) -> Tensor:
    """Bool Tensor[B, height, width], True on the cells outside each image's real ``real_hw`` (Tensor[B, 2]
    int, (h, w) in cells; padding is bottom / right)."""
    rows = torch.arange(height, device=real_hw.device)[None, :, None]  # [1, h, 1]
    cols = torch.arange(width, device=real_hw.device)[None, None, :]  # [1, 1, w]
    return (rows >= real_hw[:, 0, None, None]) | (cols >= real_hw[:, 1, None, None])  # [B, h, w]


class SinePositionEncoding(nn.Module):
    """``PositionEmbeddingSine`` of DETR with ``normalize=True``: ``dim / 2`` channels encode y, ``dim / 2``
    encode x, each as interleaved sin / cos of ``2 pi * position / extent`` over ``temperature`` frequencies.

    Args:
        dim: channels of the encoding (the transformer's width; even).
        temperature: the frequency base (10000).
        scale: the angle of a full extent (2 pi).

    ``forward(mask Tensor[B, h, w] bool (True = padding) or None, batch, height, width) -> Tensor[B, dim, h, w]``
    with ``(batch, height, width)`` read when ``mask`` is None (no padding).
    """

    def __init__(self, dim: int, temperature: float = 10000.0, scale: float = 2 * math.pi) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"dim must be even, got {dim}")
        self.num_feats = dim // 2
        self.temperature = float(temperature)
        self.scale = float(scale)

    def forward(self, mask: Tensor | None, batch: int, height: int, width: int, device=None) -> Tensor:
        if mask is None:
            not_mask = torch.ones(batch, height, width, device=device)  # [B, h, w]
        else:
            not_mask = (~mask).float()
        y_embed = not_mask.cumsum(1)  # [B, h, w]: 1..h_real down the real rows, constant in the padding
        x_embed = not_mask.cumsum(2)  # [B, h, w]
        eps = 1e-6
        y_embed = (y_embed - 0.5) / (y_embed[:, -1:, :] + eps) * self.scale
        x_embed = (x_embed - 0.5) / (x_embed[:, :, -1:] + eps) * self.scale
        index = torch.arange(self.num_feats, dtype=torch.float32, device=not_mask.device)
        dim_t = self.temperature ** (2 * torch.div(index, 2, rounding_mode="floor") / self.num_feats)  # [F]
        pos_x = x_embed[..., None] / dim_t  # [B, h, w, F]
        pos_y = y_embed[..., None] / dim_t  # [B, h, w, F]
        pos_x = torch.stack([pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()], dim=4).flatten(
            3
        )  # [B, h, w, F]
        pos_y = torch.stack([pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()], dim=4).flatten(3)
        return torch.cat([pos_y, pos_x], dim=3).permute(0, 3, 1, 2)  # [B, dim, h, w]

    def extra_repr(self) -> str:
        return f"dim={2 * self.num_feats}, temperature={self.temperature}"
