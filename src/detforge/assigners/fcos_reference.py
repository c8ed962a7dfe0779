"""FCOS targets for one image, one location at a time: the readable reference of the batched assigner.

``assign_fcos_targets`` walks every location of every level in plain Python and applies the rules stated in
:mod:`detforge.assigners.fcos` (strictly inside the box or its centre region, ``lo <= max(ltrb) <= hi``,
smallest area wins, equal areas go to the lowest GT index). Arithmetic is done in float32, like the batched
:class:`~detforge.assigners.fcos.FCOSAssigner`, so both give identical assignments. Use it to understand or
check assignments on small inputs; train with ``FCOSAssigner``.

Example: the box ``[10, 20, 50, 80]`` on a 128 x 128 image with strides (8, 16, 32) and the default ranges
is positive on stride 8 only, at the 5 x 7 locations ``fx = 1..5``, ``fy = 3..9`` (no distance reaches 64, so
strides 16 and 32 get nothing); the location ``(3, 6)`` at point ``(28, 52)`` gets ``ltrb = (18, 32, 22, 28)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["FCOSLocationTarget", "assign_fcos_targets", "fcos_targets_to_tensors"]

_f32 = np.float32


@dataclass(frozen=True)
class FCOSLocationTarget:
    """Target of one location of one level.

    ``label`` is -1, ``ltrb`` zeros, ``centerness`` 0 and ``matched_gt`` -1 for background.
    """

    fx: int
    fy: int
    stride: int
    label: int
    ltrb: tuple[float, float, float, float]
    centerness: float
    matched_gt: int


def assign_fcos_targets(
    gt_boxes: Tensor | Sequence[Sequence[float]],
    gt_classes: Tensor | Sequence[int],
    feat_sizes: Sequence[tuple[int, int]],
    strides: Sequence[int] = (8, 16, 32),
    size_ranges: Sequence[tuple[float, float]] = ((0.0, 64.0), (64.0, 128.0), (128.0, math.inf)),
    center_sampling_radius: float | None = None,
) -> list[list[FCOSLocationTarget]]:
    """FCOS targets of one image.

    Args:
        gt_boxes: Tensor[N, 4] (or nested sequence), xyxy pixels.
        gt_classes: Tensor[N] int (or sequence), 0-indexed labels.
        feat_sizes: (H, W) of each level.
        strides: stride of each level in pixels.
        size_ranges: ``(lo, hi)`` per level; a box is assigned on a level when ``lo <= max(ltrb) <= hi``.
        center_sampling_radius: when set, positives must lie within ``radius * stride`` of the box centre.

    Returns:
        one list per level of ``H * W`` :class:`FCOSLocationTarget`, row-major (``fy * W + fx``).
    """
    boxes = np.asarray(torch.as_tensor(gt_boxes, dtype=torch.float32).reshape(-1, 4), dtype=_f32)
    classes = [int(c) for c in torch.as_tensor(gt_classes, dtype=torch.int64).reshape(-1)]
    if len(classes) != len(boxes):
        raise ValueError(f"got {len(boxes)} boxes but {len(classes)} classes")
    if not (len(feat_sizes) == len(strides) == len(size_ranges)):
        raise ValueError(
            f"need one feature size, stride and size range per level, got {len(feat_sizes)}, "
            f"{len(strides)} and {len(size_ranges)}"
        )
    areas = [(x2 - x1) * (y2 - y1) for x1, y1, x2, y2 in boxes]
    levels = []
    for (height, width), stride, (lo, hi) in zip(feat_sizes, strides, size_ranges):
        lo, hi = _f32(lo), _f32(hi)
        level = []
        for fy in range(int(height)):
            for fx in range(int(width)):
                px, py = _f32((fx + 0.5) * stride), _f32((fy + 0.5) * stride)
                best = -1
                for g, (x1, y1, x2, y2) in enumerate(boxes):
                    ltrb = (px - x1, py - y1, x2 - px, y2 - py)
                    if center_sampling_radius is None:
                        inside = min(ltrb) > 0
                    else:
                        radius = _f32(_f32(stride) * _f32(center_sampling_radius))
                        cx, cy = (x1 + x2) / _f32(2), (y1 + y2) / _f32(2)
                        region = (
                            max(cx - radius, x1),
                            max(cy - radius, y1),
                            min(cx + radius, x2),
                            min(cy + radius, y2),
                        )
                        inside = min(px - region[0], py - region[1], region[2] - px, region[3] - py) > 0
                    if inside and lo <= max(ltrb) <= hi and (best < 0 or areas[g] < areas[best]):
                        best = g
                level.append(_location_target(fx, fy, int(stride), px, py, boxes, classes, best))
        levels.append(level)
    return levels


def _location_target(fx, fy, stride, px, py, boxes, classes, best) -> FCOSLocationTarget:
    if best < 0:
        return FCOSLocationTarget(fx, fy, stride, -1, (0.0, 0.0, 0.0, 0.0), 0.0, -1)
    x1, y1, x2, y2 = boxes[best]
    left, top, right, bottom = px - x1, py - y1, x2 - px, y2 - py
    centerness = math.sqrt((min(left, right) / max(left, right)) * (min(top, bottom) / max(top, bottom)))
    return FCOSLocationTarget(
        fx,
        fy,
        stride,
        classes[best],
        (float(left), float(top), float(right), float(bottom)),
        centerness,
        best,
    )


def fcos_targets_to_tensors(
    targets: list[list[FCOSLocationTarget]],
    feat_sizes: Sequence[tuple[int, int]] | None = None,
) -> list[tuple[Tensor, Tensor, Tensor]]:
    """Per level ``(cls [H, W] int64 (-1 background), bbox [H, W, 4] ltrb pixels float32, centerness [H, W])``.

    ``feat_sizes`` is needed only for levels with no locations; otherwise H and W come from the targets.
    """
    out = []
    for i, level in enumerate(targets):
        if level:
            height, width = max(t.fy for t in level) + 1, max(t.fx for t in level) + 1
        elif feat_sizes is not None:
            height, width = (int(v) for v in feat_sizes[i])
        else:
            height, width = 0, 0
        if len(level) != height * width:
            raise ValueError(f"level {i}: {len(level)} targets do not fill a {height} x {width} grid")
        cls = torch.full((height, width), -1, dtype=torch.int64)
        bbox = torch.zeros(height, width, 4, dtype=torch.float32)
        centerness = torch.zeros(height, width, dtype=torch.float32)
        for t in level:
            cls[t.fy, t.fx] = t.label
            bbox[t.fy, t.fx] = torch.tensor(t.ltrb)
            centerness[t.fy, t.fx] = t.centerness
        out.append((cls, bbox, centerness))
    return out
