"""Renamed keyword arguments: the old name keeps working for one release, with a ``DeprecationWarning``.

The data layer calls "the size images are resized to" ``imgsz`` everywhere (``DetectionDataModule``,
``build_train_transforms`` / ``build_val_transforms``, ``Mosaic``, the readers, ``build_dataset``); the readers'
former ``target_size=`` goes through :func:`renamed_kwargs`.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["renamed_kwargs", "warn_renamed"]

F = TypeVar("F", bound=Callable[..., Any])


def warn_renamed(where: str, old: str, new: str, stacklevel: int = 3) -> None:
    """Warn that ``old`` (of ``where``) is deprecated in favour of ``new``."""
    warnings.warn(
        f"{where}: '{old}' is deprecated and will be removed in the next release; use '{new}'",
        DeprecationWarning,
        stacklevel=stacklevel,
    )


def renamed_kwargs(**old_to_new: str) -> Callable[[F], F]:
    """Decorator: accept each old keyword (``old="new"``) as the new one, with a ``DeprecationWarning``.

    Passing both names raises ``TypeError``. The wrapped function keeps its signature (``functools.wraps``).
    """

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for old, new in old_to_new.items():
                if old in kwargs:
                    if new in kwargs:
                        raise TypeError(
                            f"{fn.__qualname__}() got both '{new}' and its deprecated name '{old}'"
                        )
                    warn_renamed(f"{fn.__qualname__}()", old, new)
                    kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
