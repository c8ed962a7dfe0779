"""Single-scale criterion (Phantom faces): centre-cell assignment on one stride-``s`` map, focal loss on the
score map, smooth L1 on the centre cells' ``(dx, dy, log w, log h)``.

Used by :class:`detforge.models.edge.phantom.Phantom`.
"""

from __future__ import annotations

from torch import Tensor, nn

from detforge.assigners.single_scale import SingleScaleAssigner
from detforge.losses import FocalLoss, SmoothL1Loss
from detforge.models.criteria.common import loss_dict, positives_normaliser

__all__ = ["SingleScaleCriterion"]


class SingleScaleCriterion(nn.Module):
    """Losses of a whole batch on one map with one class; holds loss hyper-parameters only.

    Both parts are divided by the number of positive cells averaged over DDP ranks (at least 1).

    Args:
        stride: pixels per map cell.
        focal_alpha, focal_gamma: focal-loss parameters of the score map.
        smooth_l1_beta: transition point of the box loss (in the delta units).
        cls_weight, reg_weight: weights of the parts in ``loss``.
    """

    def __init__(
        self,
        stride: float,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        smooth_l1_beta: float = 1 / 9,
        cls_weight: float = 1.0,
        reg_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.assigner = SingleScaleAssigner(stride)
        self.cls_loss_fn = FocalLoss(alpha=focal_alpha, gamma=focal_gamma, reduction="sum")
        self.reg_loss_fn = SmoothL1Loss(beta=smooth_l1_beta, reduction="sum")
        self.cls_weight = float(cls_weight)
        self.reg_weight = float(reg_weight)

    @property
    def stride(self) -> float:
        return self.assigner.stride

    def forward(
        self, cls_map: Tensor, box_map: Tensor, gt_boxes: Tensor, gt_mask: Tensor
    ) -> dict[str, Tensor]:
        """Losses of a batch.

        Args:
            cls_map: Tensor[B, 1, H, W] score logits.
            box_map: Tensor[B, 4, H, W] ``(dx, dy, log w, log h)`` per cell (see
                :mod:`detforge.assigners.single_scale`).
            gt_boxes: Tensor[B, G, 4] xyxy pixels, gt_mask: Tensor[B, G] bool (every box is of the class).

        Returns:
            ``loss`` (the weighted total), detached ``cls_loss`` and ``reg_loss``, and ``num_pos`` (this
            rank's positive cells).
        """
        if (
            cls_map.dim() != 4
            or cls_map.shape[1] != 1
            or box_map.shape != (cls_map.shape[0], 4, *cls_map.shape[2:])
        ):
            raise ValueError(
                f"cls_map must be [B, 1, H, W] and box_map [B, 4, H, W], got {tuple(cls_map.shape)} and "
                f"{tuple(box_map.shape)}"
            )
        assigned = self.assigner(tuple(cls_map.shape[-2:]), gt_boxes, gt_mask)
        pos = assigned.cls > 0  # [B, H, W]
        num_pos = positives_normaliser(pos.sum())
        cls_loss = self.cls_loss_fn(cls_map[:, 0], assigned.cls) / num_pos
        pred = box_map.permute(0, 2, 3, 1)  # [B, H, W, 4]
        reg_loss = self.reg_loss_fn(pred[pos], assigned.bbox[pos]) / num_pos
        return loss_dict(
            {"cls_loss": (self.cls_weight, cls_loss), "reg_loss": (self.reg_weight, reg_loss)}, pos.sum()
        )
