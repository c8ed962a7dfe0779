"""Regression with a learned uncertainty (Kendall & Gal): ``0.5 exp(-s) (p - t)^2 + 0.5 s``, s = log variance."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from detforge.losses._reduce import Reduction, check_reduction, check_same_shape, reduce_loss
from detforge.losses.registry import register_loss

__all__ = ["UncertaintyLoss"]


@register_loss("uncertainty")
class UncertaintyLoss(nn.Module):
    """Gaussian negative log-likelihood with a predicted log-variance ``s`` per value.

    Large errors push ``s`` up (the model says "unsure"), the ``0.5 s`` term stops it from saying so everywhere.
    ``s`` is clamped to ``[log_var_min, log_var_max]`` so ``exp(-s)`` can neither overflow nor vanish.

    Args:
        log_var_min: lower clamp of the predicted log-variance.
        log_var_max: upper clamp of the predicted log-variance.
        reduction: ``mean`` (default), ``sum`` or ``none``.
    """

    def __init__(
        self, log_var_min: float = -10.0, log_var_max: float = 10.0, reduction: Reduction = "mean"
    ) -> None:
        super().__init__()
        check_reduction(reduction)
        if not log_var_min < log_var_max:
            raise ValueError(f"log_var_min must be < log_var_max, got {log_var_min} and {log_var_max}")
        self.log_var_min = float(log_var_min)
        self.log_var_max = float(log_var_max)
        self.reduction = reduction

    def forward(
        self, pred_mean: Tensor, pred_log_var: Tensor, target: Tensor, weight: Tensor | None = None
    ) -> Tensor:
        """Loss of the predicted Gaussian ``(pred_mean, exp(pred_log_var))`` at ``target``.

        Args:
            pred_mean: Tensor[N, ...], the predicted values (e.g. Tensor[N, 4] box offsets).
            pred_log_var: Tensor[N, ...], same shape, their predicted log-variance.
            target: Tensor[N, ...], same shape.
            weight: optional, broadcastable after trailing dims are added (e.g. Tensor[N] per box).
        """
        check_same_shape("UncertaintyLoss", pred_mean, target)
        check_same_shape("UncertaintyLoss", pred_log_var, target)
        s = pred_log_var.clamp(self.log_var_min, self.log_var_max)
        loss = 0.5 * torch.exp(-s) * (pred_mean - target) ** 2 + 0.5 * s
        return reduce_loss(loss, self.reduction, weight, "UncertaintyLoss")

    compute = forward

    def extra_repr(self) -> str:
        return f"log_var_min={self.log_var_min}, log_var_max={self.log_var_max}, reduction={self.reduction!r}"
