"""torch's own element-wise losses under detforge's loss interface: ``forward(pred, target, weight=None)``.

Each class subclasses its torch twin (so ``isinstance(loss, torch.nn.SmoothL1Loss)`` holds) and only adds a
per-element weight, the ``compute`` alias, reduction validation and a connected zero for empty inputs.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from detforge.losses._reduce import Reduction, check_reduction, check_same_shape, reduce_loss
from detforge.losses.registry import register_loss

__all__ = ["BCEWithLogitsLoss", "L1Loss", "SmoothL1Loss"]


@register_loss("bce")
class BCEWithLogitsLoss(nn.BCEWithLogitsLoss):
    """Binary cross-entropy on logits (``torch.nn.BCEWithLogitsLoss``); targets in [0, 1], soft allowed.

    Args:
        reduction: ``mean`` (default), ``sum`` or ``none``.
        pos_weight: optional Tensor[C], weight of positives per class.
    """

    def __init__(self, reduction: Reduction = "mean", pos_weight: Tensor | None = None) -> None:
        check_reduction(reduction)
        super().__init__(reduction=reduction, pos_weight=pos_weight)

    def forward(self, pred: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        """``pred``: logits Tensor[N, ...]; ``target``: same shape; ``weight``: per element or per row Tensor[N]."""
        check_same_shape("BCEWithLogitsLoss", pred, target)
        loss = F.binary_cross_entropy_with_logits(
            pred, target.to(pred.dtype), reduction="none", pos_weight=self.pos_weight
        )
        return reduce_loss(loss, self.reduction, weight, "BCEWithLogitsLoss")

    compute = forward


@register_loss("l1")
class L1Loss(nn.L1Loss):
    """Absolute error ``|pred - target|`` (``torch.nn.L1Loss``); ``reduction`` ``mean`` (default), ``sum``, ``none``."""

    def __init__(self, reduction: Reduction = "mean") -> None:
        check_reduction(reduction)
        super().__init__(reduction=reduction)

    def forward(self, pred: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        """``pred``, ``target``: Tensor[N, ...] of one shape; ``weight``: per element or per row Tensor[N]."""
        check_same_shape("L1Loss", pred, target)
        loss = F.l1_loss(pred, target.to(pred.dtype), reduction="none")
        return reduce_loss(loss, self.reduction, weight, "L1Loss")

    compute = forward


@register_loss("smooth_l1")
class SmoothL1Loss(nn.SmoothL1Loss):
    """Huber-like loss (``torch.nn.SmoothL1Loss``): quadratic below ``beta``, linear above.

    Args:
        beta: where the loss turns linear (>= 0; 0 is plain L1). Faster R-CNN uses 1/9, many heads 0.1.
        reduction: ``mean`` (default), ``sum`` or ``none``.
    """

    def __init__(self, beta: float = 1.0, reduction: Reduction = "mean") -> None:
        check_reduction(reduction)
        if beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        super().__init__(reduction=reduction, beta=float(beta))

    @classmethod
    def with_beta(cls, beta: float, reduction: Reduction = "mean") -> SmoothL1Loss:
        """``SmoothL1Loss(beta=beta)``, the seed API's spelling."""
        return cls(beta=beta, reduction=reduction)

    def forward(self, pred: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        """``pred``, ``target``: Tensor[N, ...] of one shape; ``weight``: per element or per row Tensor[N]."""
        check_same_shape("SmoothL1Loss", pred, target)
        loss = F.smooth_l1_loss(pred, target.to(pred.dtype), reduction="none", beta=self.beta)
        return reduce_loss(loss, self.reduction, weight, "SmoothL1Loss")

    compute = forward
