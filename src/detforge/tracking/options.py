"""The checks of tracker options every registered tracker shares: each bad value is an
:class:`~detforge.errors.InvalidValueError` naming the option (``--tracker-option`` values arrive as YAML reads
them, so a string or a float where an integer belongs is said, not passed on)."""

from __future__ import annotations

from typing import Any

import numpy as np

from detforge.errors import InvalidValueError

__all__ = ["at_least", "common_options", "flag", "fraction", "number", "positive"]


def number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise InvalidValueError(f"{name} must be a number, got {value!r}")
    return float(value)


def fraction(name: str, value: float) -> float:
    if not 0.0 <= number(name, value) <= 1.0:
        raise InvalidValueError(f"{name} must be in [0, 1], got {value!r}")
    return float(value)


def at_least(name: str, value: int, low: int) -> int:
    if int(number(name, value)) != value or value < low:
        raise InvalidValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def positive(name: str, value: float, *, zero: bool = False) -> float:
    checked = number(name, value)
    if not np.isfinite(checked) or checked < 0 or (checked == 0 and not zero):
        raise InvalidValueError(f"{name} must be a finite number {'>=' if zero else '>'} 0, got {value!r}")
    return checked


def flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidValueError(f"{name} must be True or False, got {value!r}")
    return value


def common_options(
    lost_track_buffer: int, frame_rate: float, minimum_consecutive_frames: int
) -> dict[str, Any]:
    return {
        "lost_track_buffer": at_least("lost_track_buffer", lost_track_buffer, 0),
        "frame_rate": positive("frame_rate", frame_rate),
        "minimum_consecutive_frames": at_least("minimum_consecutive_frames", minimum_consecutive_frames, 1),
    }
