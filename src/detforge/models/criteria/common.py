"""What every criterion shares: the label check, the normaliser averaged over DDP ranks and the loss dict."""

from __future__ import annotations

import torch.distributed as dist
from torch import Tensor

__all__ = ["check_labels", "loss_dict", "mean_over_ranks", "positives_normaliser"]


def check_labels(gt_labels: Tensor, gt_mask: Tensor, num_classes: int) -> None:
    """Raise a ValueError naming the image and box when a label (Tensor[B, G]) is outside [0, num_classes)."""
    bad = gt_mask & ((gt_labels < 0) | (gt_labels >= num_classes))  # [B, G]
    if bool(bad.any()):
        b, g = (int(v) for v in bad.nonzero()[0])
        raise ValueError(
            f"target {b} of the batch, box {g}: label {int(gt_labels[b, g])} is outside [0, {num_classes}); "
            f"labels must be 0-indexed class ids ({int(bad.sum())} such boxes in the batch)"
        )


def mean_over_ranks(value: Tensor) -> Tensor:
    """``value`` averaged over DDP ranks when torch.distributed is initialised, else unchanged (detached)."""
    value = value.detach().float()
    if dist.is_available() and dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value)
        value = value / dist.get_world_size()
    return value


def positives_normaliser(num_pos: Tensor) -> Tensor:
    """The loss normaliser of a batch with ``num_pos`` positives (Tensor[]): their count averaged over DDP
    ranks, at least 1, so every rank divides by the same number and an empty batch never divides by zero."""
    return mean_over_ranks(num_pos).clamp(min=1.0)


def loss_dict(parts: dict[str, tuple[float, Tensor]], num_pos: Tensor) -> dict[str, Tensor]:
    """A criterion's output: ``loss`` = the weighted sum of ``parts`` (name -> (weight, Tensor[])) in their
    order, each part unweighted and detached under its name, and ``num_pos`` (this rank's positives, float)."""
    weighted = [weight * value for weight, value in parts.values()]
    total = weighted[0]
    for term in weighted[1:]:
        total = total + term
    out = {"loss": total}
    out.update({name: value.detach() for name, (_, value) in parts.items()})
    out["num_pos"] = num_pos.detach().float()
    return out
