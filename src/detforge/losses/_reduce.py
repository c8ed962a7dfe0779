"""Shared reduction for detforge losses: optional per-element weights, then ``none`` / ``mean`` / ``sum``."""

from __future__ import annotations

from typing import Literal

from torch import Tensor

__all__ = ["REDUCTIONS", "Reduction", "check_reduction", "check_same_shape", "reduce_loss"]

Reduction = Literal["none", "mean", "sum"]
REDUCTIONS = ("none", "mean", "sum")


def check_reduction(reduction: str) -> None:
    """Raise a ValueError naming the allowed values when ``reduction`` is not one of them."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def check_same_shape(name: str, pred: Tensor, target: Tensor) -> None:
    """Raise a ValueError naming the loss when ``pred`` and ``target`` differ in shape."""
    if pred.shape != target.shape:
        raise ValueError(
            f"{name}: prediction shape {tuple(pred.shape)} and target shape {tuple(target.shape)} differ"
        )


def reduce_loss(loss: Tensor, reduction: str, weight: Tensor | None = None, name: str = "loss") -> Tensor:
    """Weight and reduce an element-wise ``loss``.

    Args:
        loss: element-wise loss, any shape (e.g. Tensor[N] per box or Tensor[N, C] per class).
        reduction: ``none`` keeps the shape, ``sum`` adds everything, ``mean`` averages; with a ``weight``,
            ``mean`` is the weighted average ``sum(w * loss) / sum(w)`` (FCOS weights its box loss by the
            centerness targets this way).
        weight: broadcastable to ``loss`` after trailing singleton dims are added, e.g. Tensor[N] for a
            Tensor[N, C] loss.
        name: the loss's name, for error messages.

    An empty ``loss`` reduces to a zero that is still connected to the prediction's graph, so ``backward()``
    works on a batch with no positives.
    """
    if weight is not None:
        weight = weight.to(dtype=loss.dtype, device=loss.device)
        if weight.ndim < loss.ndim:
            weight = weight.reshape(*weight.shape, *([1] * (loss.ndim - weight.ndim)))
        try:
            weight = weight.expand_as(loss)
        except RuntimeError as err:
            raise ValueError(
                f"{name}: weight shape {tuple(weight.shape)} does not broadcast to loss shape {tuple(loss.shape)}"
            ) from err
        loss = loss * weight
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if reduction != "mean":
        check_reduction(reduction)
    if loss.numel() == 0:
        return loss.sum() * 0.0
    if weight is None:
        return loss.mean()
    # Zero total weight means nothing counts: the numerator is zero too, so the result is a connected zero.
    return loss.sum() / weight.sum().clamp(min=1e-12)
