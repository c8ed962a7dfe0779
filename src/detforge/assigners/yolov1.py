"""YOLOv1 cell assignment (Redmon et al. 2016), batched over images, parameter-free.

The image is cut into S x S cells (``h / S`` by ``w / S`` pixels); a ground truth belongs to the cell holding
its centre (clamped to the grid). A cell holds one object: when several centres fall in one cell the later
ground truth (higher index) keeps it. Which of the cell's B predicted boxes is responsible (highest IoU) is
the criterion's part, as it depends on the predictions.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from detforge.boxes import xyxy_to_cell

__all__ = ["YOLOv1CellAssignment", "assign_cells"]


class YOLOv1CellAssignment(NamedTuple):
    """Per cell, cells row-major."""

    matched_gt: Tensor  # [N, S * S] int64 index into the G axis, -1 = no object
    params: Tensor  # [N, S * S, 4] target (x, y, sqrt w, sqrt h) of the cell's object (0 where none)
    labels: Tensor  # [N, S * S] int64 class of the cell's object, -1 = none


@torch.no_grad()
def assign_cells(
    gt_boxes: Tensor, gt_labels: Tensor, gt_mask: Tensor, grid: int, image_size: tuple[int, int]
) -> YOLOv1CellAssignment:
    """Assign each image's ground truths (Tensor[N, G, 4] xyxy pixels, Tensor[N, G] int64, Tensor[N, G] bool)
    to the cells of an S x S grid (``grid``) over images of ``image_size`` (h, w)."""
    n, g = gt_mask.shape
    cells = grid * grid
    device = gt_boxes.device
    index, params = xyxy_to_cell(gt_boxes.float(), grid, image_size)  # [N, G], [N, G, 4]
    index = torch.where(gt_mask.bool(), index, torch.full_like(index, cells))  # padding -> spare cell
    owner = torch.full((n, cells + 1), -1, dtype=torch.int64, device=device)
    gt_index = torch.arange(g, device=device).expand(n, g)  # [N, G]
    owner.scatter_reduce_(1, index, gt_index, reduce="amax", include_self=True)
    matched = owner[:, :cells]  # [N, S * S]
    has = matched >= 0
    safe = matched.clamp(min=0)
    cell_params = params.gather(1, safe[..., None].expand(-1, -1, 4)) if g else params.new_zeros(n, cells, 4)
    cell_params = torch.where(has[..., None], cell_params, torch.zeros((), device=device))
    labels = (
        torch.where(has, gt_labels.gather(1, safe), torch.full_like(matched, -1)) if g else matched.clone()
    )
    return YOLOv1CellAssignment(matched, cell_params, labels)
