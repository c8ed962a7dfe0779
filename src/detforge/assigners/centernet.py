"""CenterNet targets (Zhou et al. 2019, "Objects as Points"): a Gaussian heatmap per class, and the size and
sub-cell offset of every object at its centre cell, on one stride-``s`` map.

Rules (those of the original ``ctdet`` code, batched):

- in map units (pixels / ``s``) an object's centre is ``c = ((x1 + x2) / 2, (y1 + y2) / 2)``, its centre cell
  ``floor(c)`` (clamped to the map), its size ``(w, h)`` and its offset ``c - floor(c)`` in [0, 1);
- the heatmap of its class gets ``exp(-(dx^2 + dy^2) / (2 sigma^2))`` over the cells within ``r`` of the
  centre cell (``|dx|, |dy| <= r``), ``sigma = (2 r + 1) / 6``, max-combined with the other objects of the
  class; ``r = max(0, floor(gaussian_radius(ceil(h), ceil(w), min_overlap)))``;
- :func:`gaussian_radius` is the minimum-overlap rule of CornerNet: the largest corner displacement ``r``
  that keeps the IoU of a displaced box with the ground truth at ``min_overlap`` or above, in each of three
  cases. The original code solves two of the three quadratics with the wrong root and the wrong ``1 / (2 a)``
  (CornerNet issue 110, CenterNet issue 116); ``legacy=True`` keeps that behaviour, the default solves them.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from detforge.boxes import xyxy_to_offset_size

__all__ = ["CenterNetTargetBuilder", "CenterNetTargets", "gaussian_radius"]


def gaussian_radius(
    height: Tensor | float, width: Tensor | float, min_overlap: float = 0.7, legacy: bool = False
) -> Tensor:
    """The minimum-overlap radius of boxes of ``height`` x ``width`` (element-wise; any units).

    With ``o = min_overlap``, the corrected radius is the smallest of the three displacements at which the IoU
    with the ground truth falls to ``o``, each the positive root of ``a r^2 + b r + c = 0``:

    1. box shifted by ``r`` in x and in y (same size): ``r^2 - (h + w) r + h w (1 - o) / (1 + o) = 0``, the
       smaller root ``((h + w) - sqrt((h + w)^2 - 4 c)) / 2``;
    2. both corners moved inwards by ``r``: ``4 r^2 - 2 (h + w) r + (1 - o) h w = 0``, the smaller root
       ``(2 (h + w) - sqrt(...)) / 8``;
    3. both corners moved outwards by ``r``: ``4 o r^2 + 2 o (h + w) r + (o - 1) h w = 0``, the positive root
       ``(-2 o (h + w) + sqrt(...)) / (8 o)``.

    ``legacy=True``: the original ``gaussian_radius`` of CornerNet / CenterNet, which takes the larger roots
    of cases 1 and 2, flips the sign of ``b`` in case 3 and divides every case by 2 instead of ``2 a``: a
    radius about three times larger for square boxes.

    Returns:
        Tensor of the broadcast shape of ``height`` and ``width`` (float32 unless they are float64).
    """
    h = torch.as_tensor(height)
    h = h if h.is_floating_point() else h.float()
    w = torch.as_tensor(width, device=h.device).to(h.dtype)
    o = float(min_overlap)
    if not 0.0 < o < 1.0:
        raise ValueError(f"min_overlap must be in (0, 1), got {min_overlap}")
    b1 = h + w
    c1 = w * h * (1 - o) / (1 + o)
    sq1 = (b1**2 - 4 * c1).clamp(min=0).sqrt()
    b2 = 2 * (h + w)
    c2 = (1 - o) * w * h
    sq2 = (b2**2 - 4 * 4 * c2).clamp(min=0).sqrt()
    b3 = -2 * o * (h + w)  # the original's b3 (the equation's b with the sign flipped)
    c3 = (o - 1) * w * h
    sq3 = (b3**2 - 4 * (4 * o) * c3).clamp(min=0).sqrt()
    if legacy:
        r1, r2, r3 = (b1 + sq1) / 2, (b2 + sq2) / 2, (b3 + sq3) / 2
    else:
        r1, r2, r3 = (b1 - sq1) / 2, (b2 - sq2) / (2 * 4), (b3 + sq3) / (2 * 4 * o)
    return torch.minimum(torch.minimum(r1, r2), r3)


class CenterNetTargets(NamedTuple):
    """Targets of a batch on one H x W map (G: the padded box axis of the batch)."""

    heatmap: Tensor  # [B, C, H, W] float32 in [0, 1], 1 at every object's centre cell
    index: Tensor  # [B, G] int64 flat centre cell ``row * W + col`` (0 for padding)
    offset_size: Tensor  # [B, G, 4] float32 (dx, dy, w, h) in map units (zeros for padding)
    mask: Tensor  # [B, G] bool, True for real objects


class CenterNetTargetBuilder:
    """Render the heatmap, size and offset targets of a padded batch (no parameters, no grad, no loop over
    images or objects: every object's Gaussian is rendered at once and max-reduced per class).

    Args:
        stride: pixels per map cell (CenterNet: 4).
        min_overlap: the IoU the radius rule keeps (0.7).
        legacy_radius: the original code's radius formula (see :func:`gaussian_radius`).

    Call ``builder(feat_size, gt_boxes, gt_labels, gt_mask, num_classes)`` with ``feat_size = (H, W)``,
    ``gt_boxes`` (Tensor[B, G, 4] xyxy pixels), ``gt_labels`` (Tensor[B, G] int64) and ``gt_mask`` (Tensor[B, G]
    bool) from :func:`detforge.targets.pad_targets`. Memory: one float per (image, box, cell).
    """

    def __init__(self, stride: float, min_overlap: float = 0.7, legacy_radius: bool = False) -> None:
        if not stride > 0:
            raise ValueError(f"stride must be > 0, got {stride}")
        if not 0.0 < min_overlap < 1.0:
            raise ValueError(f"min_overlap must be in (0, 1), got {min_overlap}")
        self.stride = float(stride)
        self.min_overlap = float(min_overlap)
        self.legacy_radius = bool(legacy_radius)

    def radius(self, size: Tensor) -> Tensor:
        """Integer Gaussian radius (float Tensor[...]) of objects of ``size`` (Tensor[..., 2] (w, h), map units)."""
        r = gaussian_radius(size[..., 1].ceil(), size[..., 0].ceil(), self.min_overlap, self.legacy_radius)
        return r.floor().clamp(min=0)

    @torch.no_grad()
    def __call__(
        self,
        feat_size: tuple[int, int],
        gt_boxes: Tensor,
        gt_labels: Tensor,
        gt_mask: Tensor,
        num_classes: int,
    ) -> CenterNetTargets:
        h, w = int(feat_size[0]), int(feat_size[1])
        num_images, num_boxes = gt_mask.shape
        device = gt_boxes.device
        boxes = gt_boxes.float()  # [B, G, 4] pixels
        centre = (boxes[..., :2] + boxes[..., 2:]) * (0.5 / self.stride)  # [B, G, 2] map units
        col = centre[..., 0].floor().clamp(0, w - 1)  # [B, G]
        row = centre[..., 1].floor().clamp(0, h - 1)  # [B, G]
        corner = torch.stack([col, row], dim=-1) * self.stride  # [B, G, 2] pixels of the centre cell's corner
        strides = torch.full((num_boxes,), self.stride, device=device)  # [G]
        offset_size = xyxy_to_offset_size(corner, strides, boxes)  # [B, G, 4] (dx, dy, w, h) map units
        offset_size = offset_size * gt_mask[..., None]

        radius = self.radius(offset_size[..., 2:])  # [B, G]
        two_sigma_sq = 2 * ((2 * radius + 1) / 6) ** 2  # [B, G]
        dx = torch.arange(w, device=device, dtype=torch.float32) - col[..., None]  # [B, G, W]
        dy = torch.arange(h, device=device, dtype=torch.float32) - row[..., None]  # [B, G, H]
        gx = torch.exp(-(dx**2) / two_sigma_sq[..., None]) * (dx.abs() <= radius[..., None])  # [B, G, W]
        gy = torch.exp(-(dy**2) / two_sigma_sq[..., None]) * (dy.abs() <= radius[..., None])  # [B, G, H]
        gauss = gy[..., :, None] * gx[..., None, :] * gt_mask[..., None, None]  # [B, G, H, W]
        labels = gt_labels.clamp(min=0)[..., None].expand(num_images, num_boxes, h * w)  # [B, G, HW]
        heatmap = torch.zeros(num_images, num_classes, h * w, device=device)  # [B, C, HW]
        heatmap.scatter_reduce_(1, labels, gauss.reshape(num_images, num_boxes, h * w), "amax")
        index = (row * w + col).long() * gt_mask  # [B, G]
        return CenterNetTargets(heatmap.reshape(num_images, num_classes, h, w), index, offset_size, gt_mask)
