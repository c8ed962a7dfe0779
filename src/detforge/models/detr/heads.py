"""DETR's prediction heads, shared by every decoder layer: a linear class head (C + 1 logits, the last one
"no object", or C sigmoid logits) and a 3-layer MLP box head giving normalised (cx, cy, w, h) through a
sigmoid."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["MLP", "SetPredictionHead"]


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them: ``dim_in -> hidden ... -> dim_out`` on the last
    axis."""

    def __init__(self, dim_in: int, hidden: int, dim_out: int, num_layers: int) -> None:
        super().__init__()
        dims = [dim_in] + [hidden] * (num_layers - 1) + [dim_out]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = x.relu()
        return x


class SetPredictionHead(nn.Module):
    """Class logits and boxes of every decoder layer's queries.

    Args:
        dim: the decoder's width. num_logits: C + 1 (softmax with no-object) or C (sigmoid).
        box_layers: layers of the box MLP (3).

    ``forward(hidden Tensor[L, B, Q, D]) -> (Tensor[L, B, Q, num_logits], Tensor[L, B, Q, 4] in (0, 1))``.
    """

    def __init__(self, dim: int, num_logits: int, box_layers: int = 3) -> None:
        super().__init__()
        self.class_embed = nn.Linear(dim, num_logits)
        self.bbox_embed = MLP(dim, dim, 4, box_layers)

    def forward(self, hidden: Tensor) -> tuple[Tensor, Tensor]:
        return self.class_embed(hidden), self.bbox_embed(hidden).sigmoid()
