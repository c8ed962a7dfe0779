"""FCOS centerness: how close a location sits to the centre of its box, in [0, 1].

``centerness = sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))`` for distances ``(l, t, r, b)`` from the
location to the box's left, top, right and bottom edges. The centerness branch is trained with binary
cross-entropy on logits against these targets (``get_loss("bce")``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["centerness_targets", "compute_centerness"]

_EPS = 1e-12


def compute_centerness(
    left: float | Tensor, top: float | Tensor, right: float | Tensor, bottom: float | Tensor
) -> float | Tensor:
    """Centerness of a location from its edge distances; scalars give a float, tensors a tensor (broadcast).

    Negative distances (the location is outside the box) count as 0, so such locations get 0; a location
    exactly on an edge gets 0 too.
    """
    if not any(isinstance(v, Tensor) for v in (left, top, right, bottom)):
        left, top, right, bottom = (max(float(v), 0.0) for v in (left, top, right, bottom))
        lr = min(left, right) / max(left, right, _EPS)
        tb = min(top, bottom) / max(top, bottom, _EPS)
        return math.sqrt(lr * tb)
    ref = next(v for v in (left, top, right, bottom) if isinstance(v, Tensor))
    dtype = ref.dtype if ref.is_floating_point() else torch.float32
    left, top, right, bottom = (
        torch.as_tensor(v, dtype=dtype, device=ref.device).clamp(min=0) for v in (left, top, right, bottom)
    )
    lr = torch.minimum(left, right) / torch.maximum(left, right).clamp(min=_EPS)
    tb = torch.minimum(top, bottom) / torch.maximum(top, bottom).clamp(min=_EPS)
    return torch.sqrt(lr * tb)


def centerness_targets(ltrb: Tensor) -> Tensor:
    """Centerness (Tensor[...]) of FCOS regression targets ``ltrb`` (Tensor[..., 4], distances in pixels)."""
    if ltrb.shape[-1] != 4:
        raise ValueError(f"ltrb must have 4 distances in the last dim, got shape {tuple(ltrb.shape)}")
    return compute_centerness(*ltrb.unbind(-1))
