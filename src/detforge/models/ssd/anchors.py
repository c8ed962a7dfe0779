"""SSD's default boxes (Liu et al. 2016, section 2.2; torchvision's ``DefaultBoxGenerator``).

Level ``k`` of ``L`` has the scale ``s_k = min_ratio + (max_ratio - min_ratio) * k / (L - 1)`` (relative to the
image side; ``s_L = 1``) and, at every location, the boxes ``(s_k, s_k)``, ``(s'_k, s'_k)`` with
``s'_k = sqrt(s_k * s_{k+1})``, and ``(s_k sqrt(r), s_k / sqrt(r))``, ``(s_k / sqrt(r), s_k sqrt(r))`` for each
aspect ratio ``r`` of the level. Without explicit steps a level's centres are its cells' centres in relative
units, ``(j + 0.5) / W_k``, so the boxes follow the feature map's size rather than a fixed stride; relative
(cx, cy, w, h) become pixels of the batch tensor at the end.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["DefaultBoxes"]


class DefaultBoxes:
    """SSD's default boxes for a set of feature maps.

    Args:
        aspect_ratios: the aspect ratios of each level (``[[2, 3]] * 6`` for SSDlite: 6 boxes per location).
        min_ratio, max_ratio: the scales of the first and last level, relative to the image side.
        scales: explicit scales (one per level plus one), instead of ``min_ratio`` / ``max_ratio``.
        steps: explicit strides per level (pixels) placing the centres; None: from each feature map's size.
        clip: clip the relative widths and heights to [0, 1].

    ``boxes(feat_sizes [(H, W) per level], image_size (H, W)) -> Tensor[A, 4]`` xyxy pixels, levels
    concatenated, ordered (row, column, box) inside a level (the head's order); cached per sizes and device.
    """

    def __init__(
        self,
        aspect_ratios: Sequence[Sequence[float]],
        min_ratio: float = 0.15,
        max_ratio: float = 0.9,
        scales: Sequence[float] | None = None,
        steps: Sequence[int] | None = None,
        clip: bool = True,
    ) -> None:
        num_levels = len(aspect_ratios)
        if num_levels < 1:
            raise ValueError("aspect_ratios needs one entry per feature level, got none")
        if steps is not None and len(steps) != num_levels:
            raise ValueError(f"steps needs one entry per level ({num_levels}), got {len(steps)}")
        if scales is None:
            if num_levels > 1:
                span = max_ratio - min_ratio
                scales = [min_ratio + span * k / (num_levels - 1.0) for k in range(num_levels)] + [1.0]
            else:
                scales = [min_ratio, max_ratio]
        if len(scales) != num_levels + 1:
            raise ValueError(
                f"scales needs {num_levels + 1} entries (one per level plus one), got {len(scales)}"
            )
        self.aspect_ratios = [tuple(r) for r in aspect_ratios]
        self.scales = [float(s) for s in scales]
        self.steps = None if steps is None else [int(s) for s in steps]
        self.clip = bool(clip)
        self.sizes = [self._level_sizes(k) for k in range(num_levels)]  # [S_k, 2] relative (w, h) per level
        self._cache: dict[tuple, Tensor] = {}

    def _level_sizes(self, k: int) -> Tensor:
        """Relative (w, h) of the boxes at one location of level ``k``: Tensor[2 + 2 * R_k, 2] float32."""
        s_k = self.scales[k]
        pairs = [[s_k, s_k], [math.sqrt(s_k * self.scales[k + 1])] * 2]
        for ratio in self.aspect_ratios[k]:
            root = math.sqrt(ratio)
            pairs += [[s_k * root, s_k / root], [s_k / root, s_k * root]]
        sizes = torch.tensor(pairs, dtype=torch.float32)
        return sizes.clamp(0.0, 1.0) if self.clip else sizes

    def num_anchors_per_location(self) -> list[int]:
        """Boxes per location of each level: 2 + 2 x its aspect ratios."""
        return [int(s.shape[0]) for s in self.sizes]

    def boxes(
        self, feat_sizes: Sequence[tuple[int, int]], image_size: tuple[int, int], device=None
    ) -> Tensor:
        """xyxy pixel boxes (Tensor[A, 4] float32) of feature maps ``feat_sizes`` on an image (the batch
        tensor) of ``image_size`` (h, w)."""
        key = (
            tuple((int(h), int(w)) for h, w in feat_sizes),
            (int(image_size[0]), int(image_size[1])),
            device,
        )
        cached = self._cache.get(key)
        if cached is None:
            cached = self._compute(*key[:2]).to(device)
            if len(self._cache) > 16:
                self._cache.clear()
            self._cache[key] = cached
        return cached

    def _compute(self, feat_sizes: tuple[tuple[int, int], ...], image_size: tuple[int, int]) -> Tensor:
        if len(feat_sizes) != len(self.sizes):
            raise ValueError(f"{len(feat_sizes)} feature maps for default boxes of {len(self.sizes)} levels")
        height, width = image_size
        levels = []
        for k, ((h, w), sizes) in enumerate(zip(feat_sizes, self.sizes)):
            # relative centres: cells of the map, or multiples of the step on the image
            grid_w, grid_h = (width / self.steps[k], height / self.steps[k]) if self.steps else (w, h)
            cx = (torch.arange(w, dtype=torch.float32) + 0.5) / grid_w  # [W]
            cy = (torch.arange(h, dtype=torch.float32) + 0.5) / grid_h  # [H]
            cy, cx = torch.meshgrid(cy, cx, indexing="ij")  # [H, W] each
            centres = torch.stack([cx, cy], -1).reshape(-1, 1, 2).expand(-1, sizes.shape[0], 2)  # [HW, S, 2]
            half = (0.5 * sizes)[None].expand_as(centres)  # [HW, S, 2]
            levels.append(torch.cat([centres - half, centres + half], -1).reshape(-1, 4))  # [HW * S, 4]
        scale = torch.tensor([width, height, width, height], dtype=torch.float32)  # [4]
        return torch.cat(levels) * scale  # [A, 4]
