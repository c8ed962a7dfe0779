"""Tile geometry for sliced training and inference: the overlapping windows that cover an image.

The windows follow SAHI's ``get_slice_bboxes`` exactly (so a SAHI comparison cuts the same tiles): along each
axis a tile starts every ``slice - int(overlap * slice)`` pixels from 0 while it fits; the last tile is shifted
back to end flush with the border (it overlaps its neighbour by more than ``overlap``); an axis no longer than
the slice gets one tile, ``[0, size)``, smaller than the slice. Windows are row-major (top row first).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["axis_starts", "pair", "tile_windows"]


def pair(value: int | Sequence[int], name: str = "slice_size") -> tuple[int, int]:
    """``(height, width)`` from an int (square) or a pair; ValueError unless both are positive ints."""
    hw = (value, value) if isinstance(value, int) else tuple(value)
    if len(hw) != 2 or not all(isinstance(v, int) and v > 0 for v in hw):
        raise ValueError(f"{name} must be a positive int or a (height, width) pair of them, got {value!r}")
    return int(hw[0]), int(hw[1])


def axis_starts(size: int, slice_len: int, overlap: float) -> list[int]:
    """Start offsets of the tiles along one axis of ``size`` pixels (see the module doc)."""
    if size <= slice_len:
        return [0]
    step = slice_len - int(overlap * slice_len)
    starts = list(range(0, size - slice_len, step))  # tiles that fit strictly inside
    starts.append(size - slice_len)  # the last one flush with the border
    return starts


def tile_windows(
    height: int, width: int, slice_size: int | Sequence[int], overlap: float | Sequence[float] = 0.2
) -> Tensor:
    """The overlapping tile windows covering an ``height`` x ``width`` image.

    Args:
        height, width: image size in pixels.
        slice_size: tile size, an int (square) or ``(height, width)``.
        overlap: overlap ratio of neighbouring tiles in ``[0, 1)``, one float or ``(height, width)``.

    Returns:
        int64 Tensor[T, 4]: ``xyxy`` windows in pixels, row-major, each inside the image; a window is
        ``slice_size`` unless the image is smaller than the slice along that axis (then the whole axis).
    """
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height} x {width}")
    sh, sw = pair(slice_size)
    oh, ow = (overlap, overlap) if isinstance(overlap, int | float) else tuple(overlap)
    for o in (oh, ow):
        if not 0.0 <= o < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {overlap!r}")
    ys = axis_starts(height, sh, oh)
    xs = axis_starts(width, sw, ow)
    y0 = torch.tensor(ys, dtype=torch.int64).repeat_interleave(len(xs))  # [T]
    x0 = torch.tensor(xs, dtype=torch.int64).repeat(len(ys))  # [T]
    return torch.stack([x0, y0, (x0 + sw).clamp(max=width), (y0 + sh).clamp(max=height)], dim=1)  # [T, 4]
