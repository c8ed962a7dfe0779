"""Penalty-reduced pixel-wise focal loss (CornerNet, CenterNet) on a Gaussian heatmap target:

``-(1 - p)^alpha log(p)`` where the target is 1, ``-(1 - y)^beta p^alpha log(1 - p)`` elsewhere, with
``p = sigmoid(logit)`` and ``y`` the target; alpha 2, beta 4 in both papers. The logs come from
``logsigmoid`` (the original code clamps ``p`` to [1e-4, 1 - 1e-4] instead).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from detforge.losses._reduce import Reduction, check_reduction, check_same_shape, reduce_loss

__all__ = ["HeatmapFocalLoss"]


class HeatmapFocalLoss(nn.Module):
    """Penalty-reduced focal loss of heatmap logits against a heatmap target in [0, 1] (module docstring).

    Args:
        alpha: focusing exponent on the predicted probability (2).
        beta: exponent of the penalty reduction ``(1 - y)^beta`` near an object's centre (4).
        reduction: ``sum`` (the default: CenterNet divides by the number of objects itself), ``mean`` or
            ``none``.
    """

    def __init__(self, alpha: float = 2.0, beta: float = 4.0, reduction: Reduction = "sum") -> None:
        super().__init__()
        check_reduction(reduction)
        if alpha < 0 or beta < 0:
            raise ValueError(f"alpha and beta must be >= 0, got {alpha} and {beta}")
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.reduction = reduction

    def forward(self, logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        """Loss of ``logits`` (any shape, e.g. Tensor[B, C, H, W]) against ``target`` (same shape, in [0, 1],
        exactly 1 at the centres)."""
        check_same_shape("HeatmapFocalLoss", logits, target)
        logits, target = logits.float(), target.float()
        prob = logits.sigmoid()
        pos = target == 1
        pos_loss = (1 - prob) ** self.alpha * F.logsigmoid(logits)
        neg_loss = (1 - target) ** self.beta * prob**self.alpha * F.logsigmoid(-logits)
        loss = -pos_loss.where(pos, neg_loss)
        return reduce_loss(loss, self.reduction, weight, name="HeatmapFocalLoss")
