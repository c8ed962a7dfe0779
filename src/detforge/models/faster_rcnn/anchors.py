"""Anchor boxes per FPN level (torchvision's ``AnchorGenerator``): one set of sizes x aspect ratios per level,
placed at every location of the level's grid."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from detforge.boxes import grid_points

__all__ = ["AnchorGenerator", "default_anchor_sizes"]


def default_anchor_sizes(strides: Sequence[int]) -> tuple[tuple[int, ...], ...]:
    """One anchor size per level, 8 x its stride: torchvision's (32, 64, 128, 256, 512) on strides 4-64."""
    return tuple((8 * int(s),) for s in strides)


class AnchorGenerator(nn.Module):
    """Anchors of every level, concatenated level by level, ordered (row, column, anchor) inside a level.

    Args:
        strides: stride of each level in pixels.
        sizes: anchor sizes (square-root areas, pixels) per level.
        aspect_ratios: height / width ratios per level (one tuple for every level, or one per level).

    ``forward(feat_sizes [(H, W) per level], device) -> (anchors Tensor[A, 4] xyxy, anchors per level)``.
    The base anchors are centred on the location's top-left corner ``(x * s, y * s)`` and rounded to whole
    pixels, as torchvision's.
    """

    def __init__(
        self,
        strides: Sequence[int],
        sizes: Sequence[Sequence[float]],
        aspect_ratios: Sequence[Sequence[float]] = ((0.5, 1.0, 2.0),),
    ) -> None:
        super().__init__()
        if len(aspect_ratios) == 1:
            aspect_ratios = tuple(aspect_ratios) * len(strides)
        if not (len(strides) == len(sizes) == len(aspect_ratios)):
            raise ValueError(
                f"anchor_sizes and aspect_ratios need one entry per pyramid level ({len(strides)} levels: "
                f"strides {tuple(strides)}), got {len(sizes)} sizes and {len(aspect_ratios)} aspect ratios"
            )
        self.strides = tuple(int(s) for s in strides)
        self.base = [self._base_anchors(s, r) for s, r in zip(sizes, aspect_ratios)]
        self.num_anchors = len(self.base[0])
        if any(len(b) != self.num_anchors for b in self.base):
            raise ValueError("every level needs the same number of anchors (sizes x aspect ratios)")

    @staticmethod
    def _base_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> Tensor:
        scales = torch.as_tensor(sizes, dtype=torch.float32)
        ratios = torch.as_tensor(aspect_ratios, dtype=torch.float32)
        h_ratios = ratios.sqrt()
        w_ratios = 1 / h_ratios
        ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)  # [R * S] ratio-major
        hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
        return (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round()  # [R * S, 4]

    def forward(
        self,
        feat_sizes: Sequence[tuple[int, int]],
        device: torch.device | str | None = None,
        image_size: tuple[int, int] | None = None,
    ) -> tuple[Tensor, list[int]]:
        """``image_size``: the padded batch's (h, w); given, each level's stride is ``(h // H, w // W)`` per
        axis, as torchvision's ``AnchorGenerator`` derives it (not the nominal stride where a level's size was
        rounded up, e.g. a "pool" level of an odd-sized map). None: the nominal ``strides``."""
        if image_size is not None:
            return self._anchors_floor_strides(feat_sizes, device, image_size)
        points, _ = grid_points(feat_sizes, self.strides, device=device, offset=0.0)  # [P, 2] (x, y)
        anchors, counts, start = [], [], 0
        for (h, w), base in zip(feat_sizes, self.base):
            level = points[start : start + h * w]  # [HW, 2]
            start += h * w
            shifts = torch.cat([level, level], dim=1)  # [HW, 4]
            anchors.append((shifts[:, None, :] + base.to(device)[None]).reshape(-1, 4))  # [HW * A, 4]
            counts.append(h * w * len(base))
        return torch.cat(anchors), counts

    def _anchors_floor_strides(
        self,
        feat_sizes: Sequence[tuple[int, int]],
        device: torch.device | str | None,
        image_size: tuple[int, int],
    ) -> tuple[Tensor, list[int]]:
        """The anchors with per-axis strides ``image side // feature side`` (torchvision's rule)."""
        anchors, counts = [], []
        for (h, w), base in zip(feat_sizes, self.base):
            stride_y, stride_x = int(image_size[0]) // int(h), int(image_size[1]) // int(w)
            xs = torch.arange(int(w), device=device, dtype=torch.float32) * stride_x  # [W]
            ys = torch.arange(int(h), device=device, dtype=torch.float32) * stride_y  # [H]
            grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")  # [H, W] each
            shifts = torch.stack([grid_x, grid_y, grid_x, grid_y], dim=-1).reshape(-1, 4)  # [HW, 4]
            anchors.append((shifts[:, None, :] + base.to(device)[None]).reshape(-1, 4))  # [HW * A, 4]
            counts.append(int(h) * int(w) * len(base))
        return torch.cat(anchors), counts
