"""RT-DETR's decoder: query selection from the encoder's tokens, then deformable decoder layers with
iterative box refinement and look-forward-twice (DINO).

- Query selection: every encoder token (all levels) scores the classes and regresses a box around its
  anchor; the top ``num_queries`` tokens by best class score give the decoder's content queries (their
  features, detached) and initial reference boxes (detached).
- Each layer: self-attention (the denoising mask when training), multi-scale deformable cross-attention
  around the reference box, FFN; its heads predict class logits and a box refinement of the reference.
- Look-forward-twice: layer ``i``'s box for the loss is computed from the previous layer's box *with* its
  gradient, while the next layer gets it detached; the values are the same, so inference does not change.

Boxes are normalised cx cy w h of each image's unpadded size; on padded batches the sampling points are
scaled by each level's valid ratio (Deformable DETR), so a padded image samples its own content.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from detforge.models.detr.deformable_attention import MSDeformableAttention

__all__ = ["MLP", "RTDETRDecoder", "inverse_sigmoid"]


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    x = x.clamp(0.0, 1.0)
    return torch.log(x.clamp(min=eps) / (1.0 - x).clamp(min=eps))


class MLP(nn.Sequential):
    """``num_layers`` linear layers with ReLU between them."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int) -> None:
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        layers: list[nn.Module] = []
        for i in range(num_layers):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < num_layers - 1:
                layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class DecoderLayer(nn.Module):
    def __init__(self, dim: int, num_heads: int, ffn_dim: int, num_levels: int, num_points: int) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.cross_attn = MSDeformableAttention(dim, num_heads, num_levels, num_points)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.ReLU(inplace=True), nn.Linear(ffn_dim, dim))
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(
        self,
        tgt: Tensor,
        query_pos: Tensor,
        ref_boxes: Tensor,
        memory: Tensor,
        spatial_shapes: Sequence[tuple[int, int]],
        memory_mask: Tensor | None,
        attn_mask: Tensor | None,
    ) -> Tensor:
        q = tgt + query_pos  # [B, Q, D]
        tgt = self.norm1(tgt + self.self_attn(q, q, tgt, attn_mask=attn_mask, need_weights=False)[0])
        cross = self.cross_attn(tgt + query_pos, ref_boxes, memory, spatial_shapes, memory_mask)
        tgt = self.norm2(tgt + cross)
        return self.norm3(tgt + self.ffn(tgt))


class RTDETRDecoder(nn.Module):
    """Query selection and the deformable decoder (module docstring).

    Args:
        hidden_dim: D. num_classes: C. num_queries: matching queries (top-k encoder tokens).
        num_layers, num_heads, ffn_dim, num_levels, num_points: of the decoder layers.
        prior_prob: initial class probability (the classification biases).
    """

    def __init__(
        self,
        hidden_dim: int,
        num_classes: int,
        num_queries: int = 300,
        num_layers: int = 6,
        num_heads: int = 8,
        ffn_dim: int = 1024,
        num_levels: int = 3,
        num_points: int = 4,
        prior_prob: float = 0.01,
    ) -> None:
        super().__init__()
        self.num_queries = int(num_queries)
        self.num_classes = int(num_classes)
        d = int(hidden_dim)
        self.enc_output = nn.Sequential(nn.Linear(d, d), nn.LayerNorm(d))
        self.enc_score_head = nn.Linear(d, num_classes)
        self.enc_bbox_head = MLP(d, d, 4, 3)
        self.denoising_embed = nn.Embedding(num_classes + 1, d, padding_idx=num_classes)
        self.query_pos_head = MLP(4, 2 * d, d, 2)
        self.layers = nn.ModuleList(
            [DecoderLayer(d, num_heads, ffn_dim, num_levels, num_points) for _ in range(num_layers)]
        )
        self.score_heads = nn.ModuleList([nn.Linear(d, num_classes) for _ in range(num_layers)])
        self.bbox_heads = nn.ModuleList([MLP(d, d, 4, 3) for _ in range(num_layers)])
        bias = -math.log((1.0 - prior_prob) / prior_prob)
        for head in [self.enc_score_head, *self.score_heads]:
            nn.init.constant_(head.bias, bias)
        for head in [self.enc_bbox_head, *self.bbox_heads]:
            nn.init.zeros_(head[-1].weight)
            nn.init.zeros_(head[-1].bias)

    def anchors(
        self,
        spatial_shapes: Sequence[tuple[int, int]],
        strides: Sequence[int],
        sizes: Tensor,
        eps: float = 0.01,
    ) -> tuple[Tensor, Tensor]:
        """Anchor boxes of every token, as logits of normalised cx cy w h (Tensor[B, S, 4], 0 where
        invalid), and which are valid (Tensor[B, S, 1] bool: centre inside the image, away from its edge).
        Cell centres are ``(index + 0.5) * stride`` pixels over each image's unpadded ``sizes`` [B, 2] (h, w);
        the anchor size is 0.05 * 2^level of the image."""
        out = []
        for level, ((h, w), stride) in enumerate(zip(spatial_shapes, strides, strict=True)):
            ys = (torch.arange(h, device=sizes.device, dtype=sizes.dtype) + 0.5) * stride  # [h]
            xs = (torch.arange(w, device=sizes.device, dtype=sizes.dtype) + 0.5) * stride  # [w]
            cy = (ys[None, :, None] / sizes[:, 0, None, None]).expand(-1, h, w)  # [B, h, w]
            cx = (xs[None, None, :] / sizes[:, 1, None, None]).expand(-1, h, w)
            wh = torch.full_like(cx, 0.05 * 2.0**level)
            out.append(torch.stack([cx, cy, wh, wh], -1).flatten(1, 2))  # [B, h*w, 4]
        anchors = torch.cat(out, 1)  # [B, S, 4]
        valid = ((anchors > eps) & (anchors < 1 - eps)).all(-1, keepdim=True)  # [B, S, 1]
        return torch.where(valid, inverse_sigmoid(anchors), torch.zeros_like(anchors)), valid

    def forward(
        self,
        memory: Tensor,
        spatial_shapes: Sequence[tuple[int, int]],
        strides: Sequence[int],
        sizes: Tensor,
        valid_ratios: Tensor,
        memory_mask: Tensor | None = None,
        denoising: tuple[Tensor, Tensor, Tensor] | None = None,
    ) -> dict[str, Tensor]:
        """Decode.

        Args:
            memory: Tensor[B, S, D], the encoder's levels flattened and concatenated, finest first.
            spatial_shapes, strides: (h_l, w_l) and pixel stride per level.
            sizes: Tensor[B, 2] each image's unpadded (h, w) in pixels.
            valid_ratios: Tensor[B, L, 2] (x, y) of each level's map that the unpadded image covers.
            memory_mask: Tensor[B, S] bool, True on padding.
            denoising: (labels Tensor[B, N] int64, boxes Tensor[B, N, 4] normalised cxcywh, attn_mask
                Tensor[N + Q, N + Q] bool) queries put before the matching ones; training only.

        Returns:
            ``logits`` Tensor[L, B, N + K, C], ``boxes`` Tensor[L, B, N + K, 4] (normalised cxcywh) per
            decoder layer, ``enc_logits`` Tensor[B, K, C] and ``enc_boxes`` Tensor[B, K, 4] of the selected
            tokens; K = min(num_queries, S).
        """
        anchors, valid = self.anchors(spatial_shapes, strides, sizes)  # [B, S, 4], [B, S, 1]
        output_memory = self.enc_output(memory * valid.to(memory.dtype))  # [B, S, D]
        enc_logits = self.enc_score_head(output_memory)  # [B, S, C]
        enc_boxes_unact = self.enc_bbox_head(output_memory) + anchors  # [B, S, 4]
        k = min(self.num_queries, memory.shape[1])
        best = enc_logits.max(-1).values.masked_fill(~valid[..., 0], float("-inf"))  # [B, S]
        index = best.topk(k, dim=1).indices  # [B, K]
        topk_logits = enc_logits.gather(1, index[..., None].expand(-1, -1, enc_logits.shape[-1]))  # [B, K, C]
        topk_unact = enc_boxes_unact.gather(1, index[..., None].expand(-1, -1, 4))  # [B, K, 4]
        target = output_memory.gather(1, index[..., None].expand(-1, -1, memory.shape[-1])).detach()
        ref_unact = topk_unact.detach()  # [B, K, 4]
        attn_mask = None
        if denoising is not None:
            dn_labels, dn_boxes, attn_mask = denoising
            target = torch.cat([self.denoising_embed(dn_labels), target], 1)  # [B, N + K, D]
            ref_unact = torch.cat([inverse_sigmoid(dn_boxes), ref_unact], 1)  # [B, N + K, 4]

        ratios = valid_ratios.repeat(1, 1, 2)[:, None]  # [B, 1, L, 4] (x, y, x, y)
        ref = ref_unact.sigmoid()  # [B, Q, 4]
        ref_detached = ref
        all_logits, all_boxes = [], []
        for i, layer in enumerate(self.layers):
            query_pos = self.query_pos_head(ref_detached)  # [B, Q, D]
            sampling_ref = ref_detached[:, :, None] * ratios  # [B, Q, L, 4]
            target = layer(target, query_pos, sampling_ref, memory, spatial_shapes, memory_mask, attn_mask)
            delta = self.bbox_heads[i](target)  # [B, Q, 4]
            new_ref = (delta + inverse_sigmoid(ref_detached)).sigmoid()
            # look forward twice: the loss sees this layer's box through the previous layer's (with gradient)
            all_boxes.append(new_ref if i == 0 else (delta + inverse_sigmoid(ref)).sigmoid())
            all_logits.append(self.score_heads[i](target))
            ref, ref_detached = new_ref, new_ref.detach()
        return {
            "logits": torch.stack(all_logits),
            "boxes": torch.stack(all_boxes),
            "enc_logits": topk_logits,
            "enc_boxes": topk_unact.sigmoid(),
        }
