"""Multi-scale deformable attention (Deformable DETR, Zhu et al. 2021; as used by DINO and RT-DETR), in plain
PyTorch with :func:`torch.nn.functional.grid_sample` (no compiled operator, exports to ONNX at opset >= 16).

Each query attends to a few sampled points per head and feature level around its reference point: the
query predicts the points' offsets and their softmax attention weights; the value maps are sampled
bilinearly (zero padding, ``align_corners=False``: a location ``x`` in [0, 1] is pixel ``x * W - 0.5``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MSDeformableAttention", "ms_deform_attn"]


def ms_deform_attn(
    value: Tensor,
    spatial_shapes: Sequence[tuple[int, int]],
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """The sampling and weighted sum of multi-scale deformable attention.

    Args:
        value: Tensor[B, S, M, Dh], the value maps of all levels flattened row-major and concatenated
            (S = sum of h_l * w_l), M heads of Dh channels.
        spatial_shapes: (h_l, w_l) per level, finest first, as ints.
        sampling_locations: Tensor[B, Q, M, L, P, 2], (x, y) normalised to [0, 1] per level.
        attention_weights: Tensor[B, Q, M, L, P] (softmax-normalised over L * P by the caller).

    Returns:
        Tensor[B, Q, M * Dh].
    """
    b, _, m, dh = value.shape
    _, q, _, num_levels, p, _ = sampling_locations.shape
    values = value.split([int(h) * int(w) for h, w in spatial_shapes], dim=1)  # L x [B, h*w, M, Dh]
    grids = 2.0 * sampling_locations - 1.0  # [B, Q, M, L, P, 2] in grid_sample's [-1, 1]
    sampled = []
    for level, (h, w) in enumerate(spatial_shapes):
        v = values[level].flatten(2).transpose(1, 2).reshape(b * m, dh, int(h), int(w))  # [B*M, Dh, h, w]
        g = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)  # [B*M, Q, P, 2]
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    stacked = torch.stack(sampled, dim=-2).flatten(-2)  # [B*M, Dh, Q, L*P]
    weights = attention_weights.transpose(1, 2).reshape(b * m, 1, q, num_levels * p)  # [B*M, 1, Q, L*P]
    out = (stacked * weights).sum(-1)  # [B*M, Dh, Q]
    return out.reshape(b, m * dh, q).transpose(1, 2)  # [B, Q, M*Dh]


class MSDeformableAttention(nn.Module):
    """Multi-scale deformable attention with learned offsets and weights (Deformable DETR's ``MSDeformAttn``).

    Args:
        embed_dim: channels of queries and values (divisible by ``num_heads``).
        num_heads: attention heads M.
        num_levels: feature levels L.
        num_points: sampled points P per head and level.

    ``forward(query [B, Q, D], reference_points [B, Q, L, 2 or 4], value [B, S, D], spatial_shapes,
    value_mask [B, S] or None) -> [B, Q, D]``: reference points are normalised (x, y) per level, or boxes
    (cx, cy, w, h), in which case the offsets are scaled by half the box size over ``num_points``
    (DINO / RT-DETR). ``value_mask`` is True on padding; padded values are zeroed before sampling.
    """

    def __init__(self, embed_dim: int = 256, num_heads: int = 8, num_levels: int = 3, num_points: int = 4):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        self.embed_dim, self.num_heads = int(embed_dim), int(num_heads)
        self.num_levels, self.num_points = int(num_levels), int(num_points)
        self.sampling_offsets = nn.Linear(embed_dim, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(embed_dim, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(embed_dim, embed_dim)
        self.output_proj = nn.Linear(embed_dim, embed_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable DETR's initialisation: offsets start on rays around the reference point (one direction
        per head, the k-th point k times further out), uniform attention weights."""
        nn.init.zeros_(self.sampling_offsets.weight)
        theta = torch.arange(self.num_heads, dtype=torch.float32) * (2.0 * torch.pi / self.num_heads)
        grid = torch.stack([theta.cos(), theta.sin()], -1)  # [M, 2]
        grid = grid / grid.abs().max(-1, keepdim=True).values
        grid = grid[:, None, None, :].repeat(1, self.num_levels, self.num_points, 1)  # [M, L, P, 2]
        grid = grid * torch.arange(1, self.num_points + 1, dtype=torch.float32)[None, None, :, None]
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        value: Tensor,
        spatial_shapes: Sequence[tuple[int, int]],
        value_mask: Tensor | None = None,
    ) -> Tensor:
        b, q, _ = query.shape
        m, num_levels, p = self.num_heads, self.num_levels, self.num_points
        if len(spatial_shapes) != num_levels:
            raise ValueError(f"expected {num_levels} spatial shapes, got {len(spatial_shapes)}")
        v = self.value_proj(value)  # [B, S, D]
        if value_mask is not None:
            v = v.masked_fill(value_mask[..., None], 0.0)
        v = v.reshape(b, v.shape[1], m, self.embed_dim // m)  # [B, S, M, Dh]
        offsets = self.sampling_offsets(query).reshape(b, q, m, num_levels, p, 2)  # [B, Q, M, L, P, 2]
        weights = self.attention_weights(query).reshape(b, q, m, num_levels * p).softmax(-1)
        weights = weights.reshape(b, q, m, num_levels, p)  # [B, Q, M, L, P]
        ref = reference_points[:, :, None, :, None, :]  # [B, Q, 1, L, 1, 2 or 4]
        if reference_points.shape[-1] == 2:
            hw = torch.tensor(spatial_shapes, dtype=query.dtype, device=query.device)  # [L, 2] (h, w)
            locations = ref + offsets / hw.flip(-1)[None, None, None, :, None, :]  # [B, Q, M, L, P, 2]
        elif reference_points.shape[-1] == 4:
            locations = ref[..., :2] + offsets / p * ref[..., 2:] * 0.5  # [B, Q, M, L, P, 2]
        else:
            raise ValueError(
                f"reference_points must end in 2 or 4 values, got {tuple(reference_points.shape)}"
            )
        return self.output_proj(ms_deform_attn(v, spatial_shapes, locations, weights))  # [B, Q, D]
