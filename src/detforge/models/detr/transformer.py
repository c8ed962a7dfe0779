"""DETR's transformer (Carion et al. 2020): post-norm encoder and decoder layers that add the positional
encoding to the queries and keys of every attention (``torch.nn.TransformerEncoderLayer`` / ``DecoderLayer``
add nothing, hence these thin layers over ``nn.MultiheadAttention``), the decoder returning every layer's
normalised output for the auxiliary losses.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

__all__ = ["DETRDecoderLayer", "DETREncoderLayer", "DETRTransformer"]


def _ffn(dim: int, ffn_dim: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(dim, ffn_dim), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(ffn_dim, dim)
    )


class DETREncoderLayer(nn.Module):
    """Self-attention (queries and keys = tokens + positions, values = tokens) and a feed-forward block,
    each followed by dropout, the residual and LayerNorm.

    ``forward(src Tensor[B, N, D], pos Tensor[B, N, D], key_padding_mask Tensor[B, N] bool or None)
    -> Tensor[B, N, D]``.
    """

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.ffn = _ffn(dim, ffn_dim, dropout)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.dropout1, self.dropout2 = nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, src: Tensor, pos: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        q = k = src + pos
        attn = self.self_attn(q, k, src, key_padding_mask=key_padding_mask, need_weights=False)[0]
        src = self.norm1(src + self.dropout1(attn))
        return self.norm2(src + self.dropout2(self.ffn(src)))


class DETRDecoderLayer(nn.Module):
    """Self-attention among the object queries (+ their learned positions), cross-attention to the encoder
    memory (+ its positions, padding masked), a feed-forward block; post-norm residuals.

    ``forward(tgt Tensor[B, Q, D], memory Tensor[B, N, D], pos Tensor[B, N, D], query_pos Tensor[B, Q, D],
    memory_key_padding_mask Tensor[B, N] bool or None) -> Tensor[B, Q, D]``.
    """

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.ffn = _ffn(dim, ffn_dim, dropout)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.dropout1, self.dropout2, self.dropout3 = (
            nn.Dropout(dropout),
            nn.Dropout(dropout),
            nn.Dropout(dropout),
        )

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        pos: Tensor,
        query_pos: Tensor,
        memory_key_padding_mask: Tensor | None = None,
    ) -> Tensor:
        q = k = tgt + query_pos
        tgt = self.norm1(tgt + self.dropout1(self.self_attn(q, k, tgt, need_weights=False)[0]))
        attn = self.cross_attn(
            tgt + query_pos,
            memory + pos,
            memory,
            key_padding_mask=memory_key_padding_mask,
            need_weights=False,
        )[0]
        tgt = self.norm2(tgt + self.dropout2(attn))
        return self.norm3(tgt + self.dropout3(self.ffn(tgt)))


class DETRTransformer(nn.Module):
    """Encoder over the image tokens, decoder over the object queries (which start as zeros and carry their
    identity in ``query_pos``), the decoder's shared final LayerNorm applied to every layer's output.

    Args:
        dim: token width (DETR: 256). num_heads: attention heads (8). ffn_dim: feed-forward width (2048).
        num_encoder_layers, num_decoder_layers: (6, 6). dropout: (0.1).

    ``forward(src Tensor[B, N, D], pos Tensor[B, N, D], query_pos Tensor[B, Q, D], key_padding_mask
    Tensor[B, N] bool or None) -> Tensor[L, B, Q, D]`` (L = decoder layers, the last last).
    """

    def __init__(
        self,
        dim: int = 256,
        num_heads: int = 8,
        ffn_dim: int = 2048,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if num_decoder_layers < 1 or num_encoder_layers < 0:
            raise ValueError(
                f"need >= 0 encoder and >= 1 decoder layers, got {num_encoder_layers} and {num_decoder_layers}"
            )
        enc = DETREncoderLayer(dim, num_heads, ffn_dim, dropout)
        dec = DETRDecoderLayer(dim, num_heads, ffn_dim, dropout)
        self.encoder = nn.ModuleList(copy.deepcopy(enc) for _ in range(num_encoder_layers))
        self.decoder = nn.ModuleList(copy.deepcopy(dec) for _ in range(num_decoder_layers))
        self.decoder_norm = nn.LayerNorm(dim)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(
        self, src: Tensor, pos: Tensor, query_pos: Tensor, key_padding_mask: Tensor | None = None
    ) -> Tensor:
        memory = src  # [B, N, D]
        for layer in self.encoder:
            memory = layer(memory, pos, key_padding_mask)
        tgt = torch.zeros_like(query_pos)  # [B, Q, D]
        hidden = []
        for layer in self.decoder:
            tgt = layer(tgt, memory, pos, query_pos, key_padding_mask)
            hidden.append(self.decoder_norm(tgt))
        return torch.stack(hidden)  # [L, B, Q, D]
