"""Quality focal loss (Generalized Focal Loss, Li et al. 2020) on soft, IoU-aware class targets.

``QFL(sigma, y) = -|y - sigma|^beta * (y log(sigma) + (1 - y) log(1 - sigma))`` with ``sigma`` the sigmoid of
the logit and ``y`` in [0, 1]: the IoU of the predicted box with its ground truth at the true class, 0 at
every other class and at background locations. With hard 0/1 targets it is the focal loss with gamma = beta
and no alpha weighting.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detforge.losses._reduce import Reduction, check_reduction, check_same_shape, reduce_loss
from detforge.losses.registry import register_loss

__all__ = ["QualityFocalLoss", "quality_targets"]


def quality_targets(labels: Tensor, scores: Tensor, num_classes: int) -> Tensor:
    """Dense soft targets (Tensor[N, C]) from class indices and quality scores.

    Args:
        labels: Tensor[N] int64, class index per location, ``-1`` for background.
        scores: Tensor[N] in [0, 1], e.g. IoU of the predicted box with its matched ground truth.
        num_classes: C.
    """
    if labels.shape != scores.shape:
        raise ValueError(f"labels shape {tuple(labels.shape)} and scores shape {tuple(scores.shape)} differ")
    if labels.numel() and (int(labels.min()) < -1 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"class labels must lie in [0, {num_classes}) or be -1 for background, "
            f"got values in [{int(labels.min())}, {int(labels.max())}]"
        )
    dtype = scores.dtype if scores.is_floating_point() else torch.float32
    target = torch.zeros(*labels.shape, num_classes, dtype=dtype, device=scores.device)  # [N, C]
    pos = labels >= 0
    target[pos, labels[pos]] = scores[pos].to(dtype)
    return target


@register_loss("quality_focal")
class QualityFocalLoss(nn.Module):
    """Quality focal loss on sigmoid logits against soft targets.

    Args:
        beta: focusing exponent on ``|y - sigma|`` (GFL uses 2).
        reduction: ``sum`` (default, like FocalLoss: divide by the number of positives yourself), ``mean``,
            ``none``.
    """

    def __init__(self, beta: float = 2.0, reduction: Reduction = "sum") -> None:
        super().__init__()
        check_reduction(reduction)
        if beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        self.beta = float(beta)
        self.reduction = reduction

    def forward(self, logits: Tensor, targets: Tensor, weight: Tensor | None = None) -> Tensor:
        """Loss of ``logits`` (Tensor[N, C]) against soft ``targets`` (Tensor[N, C] in [0, 1], see
        ``quality_targets``); ``weight`` per element or per row (Tensor[N])."""
        check_same_shape("QualityFocalLoss", logits, targets)
        targets = targets.to(logits.dtype)
        bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")  # [N, C]
        modulator = (targets - logits.sigmoid()).abs().pow(self.beta)
        return reduce_loss(bce * modulator, self.reduction, weight, "QualityFocalLoss")

    compute = forward

    def extra_repr(self) -> str:
        return f"beta={self.beta}, reduction={self.reduction!r}"
