"""CenterNet criterion (Zhou et al. 2019): Gaussian heatmap targets (:mod:`detforge.assigners.centernet`),
penalty-reduced focal loss on the heatmap, L1 on the size and on the sub-cell offset at object centres only.

Used by :class:`detforge.models.centernet.CenterNet`.
"""

from __future__ import annotations

from torch import Tensor, nn

from detforge.assigners.centernet import CenterNetTargetBuilder
from detforge.losses.heatmap_focal import HeatmapFocalLoss
from detforge.models.criteria.common import check_labels, loss_dict, positives_normaliser

__all__ = ["CenterNetCriterion"]


class CenterNetCriterion(nn.Module):
    """CenterNet losses of a whole batch; holds loss hyper-parameters only (no parameters, no buffers).

    Normalisers: the heatmap loss is divided by the number of objects, the size and offset L1 losses by twice
    that (the original's mean over the objects' two coordinates); the count is averaged over DDP ranks and at
    least 1. Sizes and offsets are in map units (pixels / stride), as in the original code, so the size loss
    weight 0.1 keeps its meaning.

    Args:
        stride: pixels per map cell (4).
        min_overlap, legacy_radius: the Gaussian radius rule (:func:`~detforge.assigners.centernet.gaussian_radius`).
        alpha, beta: the heatmap focal loss's exponents (2, 4).
        heatmap_weight, size_weight, offset_weight: weights of the parts in ``loss`` (1, 0.1, 1).
    """

    def __init__(
        self,
        stride: float,
        min_overlap: float = 0.7,
        legacy_radius: bool = False,
        alpha: float = 2.0,
        beta: float = 4.0,
        heatmap_weight: float = 1.0,
        size_weight: float = 0.1,
        offset_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.target_builder = CenterNetTargetBuilder(stride, min_overlap, legacy_radius)
        self.heatmap_loss_fn = HeatmapFocalLoss(alpha=alpha, beta=beta, reduction="sum")
        weights = {
            "heatmap_weight": heatmap_weight,
            "size_weight": size_weight,
            "offset_weight": offset_weight,
        }
        for key, value in weights.items():
            if value < 0:
                raise ValueError(f"{key} must be >= 0, got {value}")
        self.heatmap_weight = float(heatmap_weight)
        self.size_weight = float(size_weight)
        self.offset_weight = float(offset_weight)

    def forward(
        self,
        heatmap: Tensor,
        size: Tensor,
        offset: Tensor,
        gt_boxes: Tensor,
        gt_labels: Tensor,
        gt_mask: Tensor,
    ) -> dict[str, Tensor]:
        """Losses of a batch.

        Args:
            heatmap: Tensor[B, C, H, W] heatmap logits.
            size: Tensor[B, 2, H, W] predicted (w, h) in map units.
            offset: Tensor[B, 2, H, W] predicted centre offset (dx, dy) inside the cell, map units.
            gt_boxes: Tensor[B, G, 4] xyxy pixels, gt_labels: Tensor[B, G] int64, gt_mask: Tensor[B, G] bool
                (:func:`detforge.targets.pad_targets`).

        Returns:
            ``loss`` (the weighted total), detached ``heatmap_loss``, ``size_loss`` and ``offset_loss``, and
            ``num_pos`` (this rank's objects).
        """
        num_images, num_classes, h, w = heatmap.shape
        if size.shape != (num_images, 2, h, w) or offset.shape != (num_images, 2, h, w):
            raise ValueError(
                f"size and offset must be [B, 2, H, W] like the heatmap {tuple(heatmap.shape)}, got "
                f"{tuple(size.shape)} and {tuple(offset.shape)}"
            )
        check_labels(gt_labels, gt_mask, num_classes)
        targets = self.target_builder((h, w), gt_boxes, gt_labels, gt_mask, num_classes)
        num_objects = gt_mask.sum()
        normaliser = positives_normaliser(num_objects)
        heatmap_loss = self.heatmap_loss_fn(heatmap, targets.heatmap) / normaliser

        num_boxes = gt_mask.shape[1]
        maps = [offset.float().flatten(2), size.float().flatten(2)]  # [B, 2, HW] each
        index = targets.index[:, None, :].expand(num_images, 2, num_boxes)  # [B, 2, G]
        pred_offset, pred_size = (m.gather(2, index).transpose(1, 2) for m in maps)  # [B, G, 2] each
        mask = gt_mask[..., None].float()  # [B, G, 1]
        offset_loss = ((pred_offset - targets.offset_size[..., :2]).abs() * mask).sum() / (2 * normaliser)
        size_loss = ((pred_size - targets.offset_size[..., 2:]).abs() * mask).sum() / (2 * normaliser)

        return loss_dict(
            {
                "heatmap_loss": (self.heatmap_weight, heatmap_loss),
                "size_loss": (self.size_weight, size_loss),
                "offset_loss": (self.offset_weight, offset_loss),
            },
            num_objects,
        )
