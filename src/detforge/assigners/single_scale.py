"""Single-scale, centre-cell target assignment (Phantom faces, YOLOv1-style grids).

Each box is assigned to the one cell of a stride-``s`` grid that holds its centre ``(cx, cy)``:
``col = floor(cx / s)``, ``row = floor(cy / s)``, clamped to the map, so a centre on or past the right or
bottom edge (a box larger than the image, or a map rounded down) goes to the last cell. That cell gets
``cls = 1`` and the box target ``(dx, dy, log_w, log_h)``:

- ``dx = cx / s - col``, ``dy = cy / s - row``: the centre's offset inside the cell in cell units, in [0, 1)
  for centres on the map; ``(col + dx) * s`` gives back ``cx`` exactly, also for clamped centres.
- ``log_w = log(w / s)``, ``log_h = log(h / s)``: the box size in strides, log-encoded.

Two boxes in one cell: the one with the smaller area wins (a small face hidden behind a large one would
otherwise never be learnt); equal areas go to the lower box index. The loser gets no cell on this map. Every
other cell is background (cls 0, box target 0, matched -1).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from detforge.boxes import centre_size_to_xyxy, grid_points, xyxy_to_centre_size

__all__ = ["SingleScaleAssigner", "SingleScaleTargets", "assign_phantom_targets", "decode_single_scale_boxes"]


class SingleScaleTargets(NamedTuple):
    """Per-cell targets of a batch on one H x W map."""

    cls: Tensor  # [B, H, W] float32, 1.0 at a box's centre cell, else 0.0
    bbox: Tensor  # [B, H, W, 4] float32 (dx, dy, log_w, log_h), zeros for background
    matched_gt: Tensor  # [B, H, W] int64 index into the G axis of gt_boxes, -1 = background


class SingleScaleAssigner:
    """Assign every box of a padded batch to its centre cell on one feature map (no parameters, no grad).

    Args:
        stride: pixels per feature-map cell (> 0).

    Call ``assigner(feat_size, gt_boxes, gt_mask)`` with ``feat_size = (H, W)``, ``gt_boxes`` (Tensor[B, G, 4]
    xyxy pixels) and ``gt_mask`` (Tensor[B, G] bool, False for padding) as made by
    :func:`detforge.targets.pad_targets`. Returns :class:`SingleScaleTargets`. The rules are in the module
    docstring.
    """

    def __init__(self, stride: float) -> None:
        if not stride > 0:
            raise ValueError(f"stride must be > 0, got {stride}")
        self.stride = float(stride)

    def __repr__(self) -> str:
        return f"SingleScaleAssigner(stride={self.stride:g})"

    @torch.no_grad()
    def __call__(self, feat_size: tuple[int, int], gt_boxes: Tensor, gt_mask: Tensor) -> SingleScaleTargets:
        """Assign targets; shapes: gt_boxes [B, G, 4] xyxy pixels, gt_mask [B, G] bool."""
        height, width = (int(v) for v in feat_size)
        if height <= 0 or width <= 0:
            raise ValueError(f"feat_size must be two positive ints (H, W), got {tuple(feat_size)}")
        if gt_boxes.dim() != 3 or gt_boxes.shape[-1] != 4:
            raise ValueError(f"gt_boxes must be [B, G, 4], got {tuple(gt_boxes.shape)}")
        if gt_mask.shape != gt_boxes.shape[:2]:
            raise ValueError(
                f"gt_mask must be [B, G] = {tuple(gt_boxes.shape[:2])}, got {tuple(gt_mask.shape)}"
            )
        device = gt_boxes.device
        num_images, num_gt = gt_boxes.shape[:2]
        boxes = gt_boxes.float().reshape(-1, 4)  # [B*G, 4]
        valid = gt_mask.bool().reshape(-1)  # [B*G]
        _check_boxes(boxes, valid, num_gt)

        num_cells = height * width
        x1, y1, x2, y2 = boxes.unbind(-1)  # [B*G] each
        w, h = x2 - x1, y2 - y1
        cx, cy = (x1 + x2) / 2 / self.stride, (y1 + y2) / 2 / self.stride  # [B*G], in cells
        col = cx.floor().clamp(0, width - 1)  # [B*G]
        row = cy.floor().clamp(0, height - 1)  # [B*G]
        image = torch.arange(num_images, device=device).repeat_interleave(num_gt)  # [B*G]
        # Flat cell of each box; padding goes to one extra slot past the end and is dropped.
        cell = image * num_cells + row.long() * width + col.long()  # [B*G]
        cell = torch.where(valid, cell, num_images * num_cells)

        # Rank boxes by (area, flat index); the stable sort keeps the lower index first among equal areas.
        # Padding gets an infinite area so every real box outranks it.
        area = torch.where(valid, w * h, torch.inf)  # [B*G]
        order = torch.argsort(area, stable=True)  # [B*G]
        rank = torch.empty_like(order)
        rank[order] = torch.arange(order.numel(), device=device)  # [B*G]
        best = torch.full((num_images * num_cells + 1,), order.numel(), dtype=torch.int64, device=device)
        best.scatter_reduce_(0, cell, rank, reduce="amin")  # [B*H*W + 1] lowest rank per cell
        best = best[:-1]  # [B*H*W]
        won = best < order.numel()  # [B*H*W]
        winner = order[best[won]]  # [M] flat (image, gt) index of each positive cell's box

        corners, strides = grid_points([(height, width)], [self.stride], device=device, offset=0.0)  # [HW, 2]
        own = row.long() * width + col.long()  # [B*G] the box's cell inside its image
        deltas = xyxy_to_centre_size(corners[own], strides[own], boxes)  # [B*G, 4] (dx, dy, log w, log h)
        cls = won.float()  # [B*H*W]
        bbox = torch.zeros(num_images * num_cells, 4, device=device)  # [B*H*W, 4]
        bbox[won] = deltas[winner]
        matched = torch.full((num_images * num_cells,), -1, dtype=torch.int64, device=device)  # [B*H*W]
        matched[won] = winner % max(num_gt, 1)
        return SingleScaleTargets(
            cls=cls.view(num_images, height, width),
            bbox=bbox.view(num_images, height, width, 4),
            matched_gt=matched.view(num_images, height, width),
        )


def _check_boxes(boxes: Tensor, valid: Tensor, num_gt: int) -> None:
    """Raise a ValueError naming the first real box that is not finite or has no positive width and height."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    bad = valid & ~(torch.isfinite(boxes).all(-1) & (x2 > x1) & (y2 > y1))  # [B*G]
    if bool(bad.any()):
        flat = int(bad.nonzero()[0])
        b, g = divmod(flat, max(num_gt, 1))
        raise ValueError(
            f"SingleScaleAssigner: gt_boxes[{b}, {g}] = {boxes[flat].tolist()} is not a finite xyxy box with "
            f"x2 > x1 and y2 > y1 ({int(bad.sum())} such boxes in the batch)"
        )


def assign_phantom_targets(
    gt_faces: Tensor, feat_h: int, feat_w: int, stride: float
) -> tuple[Tensor, Tensor]:
    """Targets of one image: the seed API over :class:`SingleScaleAssigner` (same rules).

    Args:
        gt_faces: Tensor[N, 4], xyxy pixels; N may be 0.
        feat_h, feat_w: feature-map size in cells.
        stride: pixels per cell.

    Returns:
        cls (Tensor[H, W] float32, 1.0 at each face's centre cell) and bbox (Tensor[H, W, 4] float32,
        ``(dx, dy, log_w, log_h)``). With two faces in one cell the smaller one wins.
    """
    faces = torch.as_tensor(gt_faces, dtype=torch.float32).reshape(1, -1, 4)  # [1, N, 4]
    mask = torch.ones(faces.shape[:2], dtype=torch.bool, device=faces.device)  # [1, N]
    targets = SingleScaleAssigner(stride)((feat_h, feat_w), faces, mask)
    return targets.cls[0], targets.bbox[0]


def decode_single_scale_boxes(deltas: Tensor, stride: float) -> Tensor:
    """Invert the box targets: ``(dx, dy, log_w, log_h)`` per cell (Tensor[..., H, W, 4]) -> xyxy pixels
    (Tensor[..., H, W, 4]) of the box each cell would predict."""
    height, width = deltas.shape[-3:-1]
    corners, strides = grid_points(
        [(height, width)], [stride], device=deltas.device, dtype=deltas.dtype, offset=0.0
    )
    boxes = centre_size_to_xyxy(corners, strides, deltas.flatten(-3, -2))  # [..., H*W, 4]
    return boxes.unflatten(-2, (height, width))
