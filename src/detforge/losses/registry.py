"""A flat name -> loss class registry, so configs and model builders can pick a loss by name.

Built-in names: focal, quality_focal, bce, l1, smooth_l1, iou, giou, diou, ciou, uncertainty. They register
when ``detforge.losses`` is imported; ``get_loss`` and ``list_losses`` import it on first use.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

__all__ = ["get_loss", "is_loss", "list_losses", "register_loss"]

_LOSSES: dict[str, Callable[..., nn.Module]] = {}
_LOADED = False

T = TypeVar("T", bound=Callable[..., nn.Module])


def register_loss(name: str) -> Callable[[T], T]:
    """Decorator: register a loss class (or builder function) under ``name``. Duplicate names raise."""

    def wrap(builder: T) -> T:
        if not isinstance(name, str) or not name:
            raise ValueError(f"loss name must be a non-empty string, got {name!r}")
        if name in _LOSSES:
            raise ValueError(f"loss {name!r} is already registered (by {_LOSSES[name]!r})")
        _LOSSES[name] = builder
        return builder

    return wrap


def _load_builtin() -> None:
    """Import ``detforge.losses`` once, whose modules register the built-in losses."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    import detforge.losses  # noqa: F401


def list_losses() -> list[str]:
    """Sorted names of every registered loss."""
    _load_builtin()
    return sorted(_LOSSES)


def is_loss(name: str) -> bool:
    _load_builtin()
    return name in _LOSSES


def get_loss(name: str, **kwargs: Any) -> nn.Module:
    """Build the loss registered as ``name`` with its keyword arguments, e.g. ``get_loss("focal", alpha=0.5)``."""
    _load_builtin()
    if name not in _LOSSES:
        raise ValueError(f"unknown loss {name!r}; registered: {', '.join(sorted(_LOSSES))}")
    return _LOSSES[name](**kwargs)
