"""RT-DETR's efficient hybrid encoder (Zhao et al. 2024, "DETRs Beat YOLOs on Real-time Object Detection").

- every backbone level is projected to ``hidden_dim`` channels (1x1 conv + BatchNorm);
- AIFI: one transformer encoder layer (2-D sine-cosine position encoding on queries and keys) on the
  coarsest level only, where attention is cheap and the semantics are;
- CCFM: a top-down (FPN) then bottom-up (PAN) fusion of the levels with small conv blocks.

``forward(features list[Tensor[B, C_l, H_l, W_l]]) -> list[Tensor[B, D, H_l, W_l]]``, finest first. It sees
no padding: :class:`~detforge.models.detr.rtdetr.RTDETR` runs the images of a padded batch on their real crops.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["HybridEncoder", "sincos_position_2d"]


def sincos_position_2d(h: int, w: int, dim: int, temperature: float = 10000.0, device=None) -> Tensor:
    """RT-DETR's 2-D sine-cosine position encoding of an h x w grid: Tensor[1, h * w, dim] (row-major);
    ``dim`` divisible by 4 (sin / cos of x, then of y... as ``build_2d_sincos_position_embedding``)."""
    if dim % 4:
        raise ValueError(f"the position encoding needs a dimension divisible by 4, got {dim}")
    gy, gx = torch.meshgrid(
        torch.arange(h, dtype=torch.float32, device=device),
        torch.arange(w, dtype=torch.float32, device=device),
        indexing="ij",
    )
    quarter = dim // 4
    omega = 1.0 / temperature ** (torch.arange(quarter, dtype=torch.float32, device=device) / quarter)
    out_x = gx.flatten()[:, None] * omega[None]  # [hw, dim / 4]
    out_y = gy.flatten()[:, None] * omega[None]
    return torch.cat([out_x.sin(), out_x.cos(), out_y.sin(), out_y.cos()], dim=1)[None]  # [1, hw, dim]


def conv_bn_act(c_in: int, c_out: int, kernel: int = 1, stride: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(c_out),
    ]
    if act:
        layers.append(nn.SiLU(inplace=True))
    return nn.Sequential(*layers)


class FusionBlock(nn.Sequential):
    """Two concatenated maps (2D channels) -> D channels: a 1x1 conv, then ``depth`` residual 3x3 convs
    (a light stand-in for RT-DETR's RepC3)."""

    def __init__(self, dim: int, depth: int = 1) -> None:
        super().__init__(
            conv_bn_act(2 * dim, dim), *[_Residual(conv_bn_act(dim, dim, 3)) for _ in range(depth)]
        )


class _Residual(nn.Module):
    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class AIFILayer(nn.Module):
    """One post-norm transformer encoder layer with the position encoding added to queries and keys."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.ffn = nn.Sequential(
            nn.Linear(dim, ffn_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn_dim, dim)
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, src: Tensor, pos: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        q = src + pos  # [B, S, D]
        attended = self.attn(q, q, src, key_padding_mask=key_padding_mask, need_weights=False)[0]
        src = self.norm1(src + self.dropout(attended))
        return self.norm2(src + self.dropout(self.ffn(src)))


class HybridEncoder(nn.Module):
    """Input projections, AIFI on the coarsest level and the CCFM fusion (module docstring).

    Args:
        in_channels: channels of the backbone levels, finest first (from ``feature_info``).
        hidden_dim: D, channels of every output level.
        num_heads, ffn_dim, dropout: of the AIFI layer.
        depth: residual 3x3 convs per fusion block.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        hidden_dim: int = 256,
        num_heads: int = 8,
        ffn_dim: int = 1024,
        dropout: float = 0.0,
        depth: int = 1,
    ) -> None:
        super().__init__()
        n = len(in_channels)
        self.hidden_dim = int(hidden_dim)
        self.input_proj = nn.ModuleList([conv_bn_act(int(c), hidden_dim, act=False) for c in in_channels])
        self.aifi = AIFILayer(hidden_dim, num_heads, ffn_dim, dropout)
        self.lateral = nn.ModuleList([conv_bn_act(hidden_dim, hidden_dim) for _ in range(n - 1)])
        self.top_down = nn.ModuleList([FusionBlock(hidden_dim, depth) for _ in range(n - 1)])
        self.downsample = nn.ModuleList([conv_bn_act(hidden_dim, hidden_dim, 3, 2) for _ in range(n - 1)])
        self.bottom_up = nn.ModuleList([FusionBlock(hidden_dim, depth) for _ in range(n - 1)])

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        maps = [proj(f) for proj, f in zip(self.input_proj, features, strict=True)]  # [B, D, H_l, W_l]
        top = maps[-1]
        b, d, h, w = top.shape
        tokens = top.flatten(2).transpose(1, 2)  # [B, h*w, D]
        pos = sincos_position_2d(h, w, d, device=top.device).to(top.dtype)  # [1, h*w, D]
        maps[-1] = self.aifi(tokens, pos, None).transpose(1, 2).reshape(b, d, h, w)

        # top-down: coarse to fine
        inner = [maps[-1]]
        for i in range(len(maps) - 2, -1, -1):
            k = len(maps) - 2 - i
            coarse = self.lateral[k](inner[0])
            inner[0] = coarse
            up = F.interpolate(coarse, size=maps[i].shape[-2:], mode="nearest")
            inner.insert(0, self.top_down[k](torch.cat([up, maps[i]], dim=1)))
        # bottom-up: fine to coarse
        outs = [inner[0]]
        for i in range(1, len(inner)):
            down = self.downsample[i - 1](outs[-1])
            down = down[..., : inner[i].shape[-2], : inner[i].shape[-1]]  # odd sizes: stride-2 conv rounds up
            outs.append(self.bottom_up[i - 1](torch.cat([down, inner[i]], dim=1)))
        return outs
