"""Sigmoid focal loss (RetinaNet, FCOS): ``FL = -alpha_t (1 - p_t)^gamma log(p_t)``, via torchvision."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import sigmoid_focal_loss

from detforge.losses._reduce import Reduction, check_reduction, reduce_loss
from detforge.losses.registry import register_loss

__all__ = ["FocalLoss", "labels_to_one_hot"]


def labels_to_one_hot(labels: Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Class indices (Tensor[...] int64, ``-1`` = background) -> one-hot targets (Tensor[..., C]).

    Background rows are all zeros (sigmoid classifiers have no background class). Indices ``>= num_classes``
    or ``< -1`` raise a ValueError.
    """
    if labels.numel() and (int(labels.min()) < -1 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"class labels must lie in [0, {num_classes}) or be -1 for background, "
            f"got values in [{int(labels.min())}, {int(labels.max())}]"
        )
    one_hot = F.one_hot(labels.clamp(min=0), num_classes).to(dtype)  # [..., C]
    return one_hot * (labels >= 0).unsqueeze(-1).to(dtype)


@register_loss("focal")
class FocalLoss(nn.Module):
    """Sigmoid focal loss on logits, equal to ``torchvision.ops.sigmoid_focal_loss``.

    Args:
        alpha: weight of positives in [0, 1] (negatives get ``1 - alpha``); ``-1`` turns the weighting off.
        gamma: focusing exponent >= 0; ``gamma=0`` with ``alpha=-1`` is plain binary cross-entropy.
        reduction: ``sum`` (the default: dense detectors divide by the number of positives themselves),
            ``mean`` or ``none``.
    """

    def __init__(self, alpha: float = 0.25, gamma: float = 2.0, reduction: Reduction = "sum") -> None:
        super().__init__()
        check_reduction(reduction)
        if not (0.0 <= alpha <= 1.0) and alpha != -1:
            raise ValueError(f"alpha must be in [0, 1] or -1 (no weighting), got {alpha}")
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        self.alpha = float(alpha)
        self.gamma = float(gamma)
        self.reduction = reduction

    @classmethod
    def with_params(cls, alpha: float, gamma: float, reduction: Reduction = "sum") -> FocalLoss:
        """``FocalLoss(alpha=alpha, gamma=gamma)``, the seed API's spelling."""
        return cls(alpha=alpha, gamma=gamma, reduction=reduction)

    def forward(self, logits: Tensor, targets: Tensor, weight: Tensor | None = None) -> Tensor:
        """Focal loss of ``logits`` against ``targets``.

        Args:
            logits: Tensor[N] or Tensor[N, C], raw scores before the sigmoid.
            targets: float or bool, same shape as ``logits``: binary, one-hot or soft in [0, 1]; or int64 class
                indices Tensor[N] (``-1`` = background) for Tensor[N, C] logits, turned into one-hot rows.
            weight: optional per-element (same shape) or per-row (Tensor[N]) weight.

        Returns:
            Tensor[] for ``sum`` / ``mean``, the weighted element-wise loss (shape of ``logits``) for ``none``.
        """
        if targets.dtype == torch.bool:
            targets = targets.to(logits.dtype)
        if not targets.is_floating_point():
            if logits.ndim != targets.ndim + 1:
                raise ValueError(
                    f"FocalLoss: integer class targets need logits with one more dim, got logits "
                    f"{tuple(logits.shape)} and targets {tuple(targets.shape)}"
                )
            targets = labels_to_one_hot(targets, logits.shape[-1], logits.dtype)  # [N, C]
        if logits.shape != targets.shape:
            raise ValueError(
                f"FocalLoss: logits shape {tuple(logits.shape)} and targets shape {tuple(targets.shape)} differ"
            )
        loss = sigmoid_focal_loss(logits, targets.to(logits.dtype), self.alpha, self.gamma, "none")
        return reduce_loss(loss, self.reduction, weight, "FocalLoss")

    compute = forward

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, gamma={self.gamma}, reduction={self.reduction!r}"
