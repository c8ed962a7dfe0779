"""FCOS multi-scale target assignment for a whole padded batch at once.

Rules (shared with the per-image reference in :mod:`detforge.assigners.fcos_reference`):

- Location ``(fx, fy)`` of a level with stride ``s`` is the image point ``((fx + 0.5) * s, (fy + 0.5) * s)``.
  Levels are concatenated in order; inside a level locations are row-major (``fy * W + fx``).
- ``ltrb = (px - x1, py - y1, x2 - px, y2 - py)`` of a GT box ``(x1, y1, x2, y2)``.
- A location is a candidate of a box when it lies strictly inside the box (``min(ltrb) > 0``). With
  ``center_sampling_radius=r`` it must instead lie strictly inside the box's centre region: the square of
  half-side ``r * s`` around the box centre, clipped to the box.
- The box must also suit the level: ``lo <= max(ltrb) <= hi`` with ``(lo, hi)`` the level's regress range
  (both ends inclusive, as in FCOS/mmdet).
- Among several candidate boxes the smallest area wins; equal areas go to the lowest GT index.
- Positives get the box's label, its ``ltrb`` in pixels and ``centerness =
  sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))``; background gets label -1, zeros and matched -1.

The batched assigner never forms the [B, P, G] location-by-box table. For every (box, level) pair it computes
the index range of grid cells whose centres can fall inside the box, expands those ranges into one flat
candidate list, runs the exact tests above only on the candidates, and resolves overlaps with a scatter-min
over a per-box rank that orders boxes by (area, GT index). Its cost follows the number of candidate
positives, not P x G.

``rule="torchvision"`` with ``point_offset=0`` and per-call ``point_strides`` (:func:`detforge.boxes.padded_strides`)
is torchvision's FCOS matching (``torchvision.models.detection.FCOS.compute_loss``): points at ``(fx * sx,
fy * sy)``, a candidate lies strictly inside the box with ``max(|px - cx|, |py - cy|) < r * s`` (``s`` the
nominal stride, torchvision's anchor size), the size test is strict (``lo < max(ltrb) < hi``), and boxes are
ranked by ``float32(1e8 - area)`` (torchvision's match score), so areas closer than float32's step near 1e8
(8 px^2) tie and go to the lowest GT index.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, NamedTuple, get_args

import torch
from torch import Tensor

from detforge.boxes import grid_points, grid_points_yx, xyxy_to_ltrb

__all__ = [
    "AssignRule",
    "FCOS_P3_P7_RANGES",
    "FCOS_P3_P7_STRIDES",
    "FCOSAssigner",
    "FCOSTargets",
    "fcos_centerness",
]

FCOS_P3_P7_STRIDES: tuple[int, ...] = (8, 16, 32, 64, 128)
FCOS_P3_P7_RANGES: tuple[tuple[float, float], ...] = (
    (-1.0, 64.0),
    (64.0, 128.0),
    (128.0, 256.0),
    (256.0, 512.0),
    (512.0, math.inf),
)


AssignRule = Literal["fcos", "torchvision"]
"""The candidate tests and tie-breaking of :class:`FCOSAssigner` (see the module docstring)."""


class FCOSTargets(NamedTuple):
    """Per-location FCOS training targets of a batch; P = locations of all levels, concatenated."""

    labels: Tensor  # [B, P] int64, -1 = background
    ltrb: Tensor  # [B, P, 4] float32 pixels, zeros for background
    centerness: Tensor  # [B, P] float32, 0 for background
    matched_gt: Tensor  # [B, P] int64 index into the G axis of gt_boxes, -1 = background


def fcos_centerness(ltrb: Tensor) -> Tensor:
    """FCOS centerness of positive ``ltrb`` distances (Tensor[..., 4], all > 0) -> Tensor[...]."""
    left_right = ltrb[..., 0::2]  # [..., 2] (l, r)
    top_bottom = ltrb[..., 1::2]  # [..., 2] (t, b)
    ratio = (left_right.amin(-1) / left_right.amax(-1)) * (top_bottom.amin(-1) / top_bottom.amax(-1))
    return ratio.sqrt()


def _check_targets(gt_boxes: Tensor, gt_labels: Tensor, gt_mask: Tensor) -> None:
    bad = gt_mask & ~torch.isfinite(gt_boxes).all(-1)  # [B, G]
    if bool(bad.any()):
        b, g = (int(v) for v in bad.nonzero()[0])
        raise ValueError(
            f"FCOSAssigner: gt_boxes[{b}, {g}] = {gt_boxes[b, g].tolist()} is not finite "
            f"({int(bad.sum())} such boxes in the batch)"
        )
    bad = gt_mask & (gt_labels < 0)  # [B, G]
    if bool(bad.any()):
        b, g = (int(v) for v in bad.nonzero()[0])
        raise ValueError(f"FCOSAssigner: gt_labels[{b}, {g}] = {int(gt_labels[b, g])} is negative")


class FCOSAssigner:
    """Assign FCOS targets to every location of every level for a padded batch (no parameters, no grad).

    Args:
        strides: stride in pixels of each level, e.g. ``(8, 16, 32, 64, 128)`` for P3-P7.
        regress_ranges: ``(lo, hi)`` per level; a box is assigned on a level when ``lo <= max(ltrb) <= hi``.
        center_sampling_radius: when set (FCOS uses 1.5), only locations within ``radius * stride`` of the
            box centre (and inside the box) are positives.
        point_offset: location ``(fx, fy)`` is the point ``((fx + offset) * s, (fy + offset) * s)``: 0.5 cell
            centres (FCOS), 0 cell corners (torchvision's anchor centres).
        rule: "fcos" (inclusive size ranges, smallest area wins) or "torchvision" (torchvision's FCOS
            matching: strict size ranges, float32 ``1e8 - area`` ranking; see the module docstring).

    Call ``assigner(feat_sizes, gt_boxes, gt_labels, gt_mask)`` with ``feat_sizes`` the (H, W) of each level,
    ``gt_boxes`` (Tensor[B, G, 4] xyxy pixels), ``gt_labels`` (Tensor[B, G] int64) and ``gt_mask``
    (Tensor[B, G] bool, False for padding) as made by :func:`detforge.targets.pad_targets`, and optionally
    ``point_strides``: the (stride_y, stride_x) spacing of each level's points when it is not the nominal stride
    (torchvision's :func:`~detforge.boxes.padded_strides`; the radius and size ranges keep the nominal
    ``strides``). Returns :class:`FCOSTargets`.
    """

    def __init__(
        self,
        strides: Sequence[int] = FCOS_P3_P7_STRIDES,
        regress_ranges: Sequence[tuple[float, float]] = FCOS_P3_P7_RANGES,
        center_sampling_radius: float | None = None,
        point_offset: float = 0.5,
        rule: AssignRule = "fcos",
    ) -> None:
        if rule not in get_args(AssignRule):
            raise ValueError(f"rule must be one of {get_args(AssignRule)}, got {rule!r}")
        strides = tuple(int(s) for s in strides)
        regress_ranges = tuple((float(lo), float(hi)) for lo, hi in regress_ranges)
        if not strides or any(s <= 0 for s in strides):
            raise ValueError(f"strides must be positive integers, got {strides}")
        if len(regress_ranges) != len(strides):
            raise ValueError(
                f"need one regress range per stride: {len(strides)} strides, {len(regress_ranges)} ranges"
            )
        if any(not lo < hi for lo, hi in regress_ranges):
            raise ValueError(f"every regress range needs lo < hi, got {regress_ranges}")
        if center_sampling_radius is not None and not center_sampling_radius > 0:
            raise ValueError(f"center_sampling_radius must be > 0 or None, got {center_sampling_radius}")
        self.strides = strides
        self.regress_ranges = regress_ranges
        self.center_sampling_radius = center_sampling_radius
        self.point_offset = float(point_offset)
        self.rule = rule

    def __repr__(self) -> str:
        return (
            f"FCOSAssigner(strides={self.strides}, regress_ranges={self.regress_ranges}, "
            f"center_sampling_radius={self.center_sampling_radius}, point_offset={self.point_offset}, "
            f"rule={self.rule!r})"
        )

    def _level_sizes(self, feat_sizes: Sequence[tuple[int, int]]) -> tuple[list[int], list[int]]:
        if len(feat_sizes) != len(self.strides):
            raise ValueError(f"got {len(feat_sizes)} feature sizes for {len(self.strides)} strides")
        heights = [int(h) for h, _ in feat_sizes]
        widths = [int(w) for _, w in feat_sizes]
        return heights, widths

    def points(
        self,
        feat_sizes: Sequence[tuple[int, int]],
        device: torch.device | str | None = None,
        point_strides: Sequence[tuple[int, int]] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Location points and strides of all levels, concatenated (the order of every [B, P] output).

        Args:
            feat_sizes: (H, W) of each level's feature map.
            point_strides: (stride_y, stride_x) spacing of each level's points; None: the nominal strides.

        Returns:
            points (Tensor[P, 2] float32, (x, y) pixels) and nominal strides (Tensor[P] float32).
        """
        self._level_sizes(feat_sizes)
        points, strides = grid_points(
            feat_sizes, self.strides, device=device, dtype=torch.float32, offset=self.point_offset
        )
        if point_strides is not None:
            points = grid_points_yx(feat_sizes, point_strides, device, torch.float32, self.point_offset)
        return points, strides

    @torch.no_grad()
    def __call__(
        self,
        feat_sizes: Sequence[tuple[int, int]],
        gt_boxes: Tensor,
        gt_labels: Tensor,
        gt_mask: Tensor,
        point_strides: Sequence[tuple[int, int]] | None = None,
    ) -> FCOSTargets:
        """Assign targets; see the class docstring. Shapes: gt_boxes [B, G, 4], gt_labels/gt_mask [B, G]."""
        if gt_boxes.dim() != 3 or gt_boxes.shape[-1] != 4:
            raise ValueError(f"gt_boxes must be [B, G, 4], got {tuple(gt_boxes.shape)}")
        if gt_labels.shape != gt_boxes.shape[:2] or gt_mask.shape != gt_boxes.shape[:2]:
            raise ValueError(
                f"gt_labels {tuple(gt_labels.shape)} and gt_mask {tuple(gt_mask.shape)} must be "
                f"[B, G] = {tuple(gt_boxes.shape[:2])}"
            )
        heights, widths = self._level_sizes(feat_sizes)
        device = gt_boxes.device
        gt_boxes = gt_boxes.float()
        gt_mask = gt_mask.bool()
        _check_targets(gt_boxes, gt_labels, gt_mask)
        num_images = gt_boxes.shape[0]
        if point_strides is not None and len(point_strides) != len(self.strides):
            raise ValueError(f"got {len(point_strides)} point strides for {len(self.strides)} levels")
        points, _ = self.points(feat_sizes, device, point_strides)  # [P, 2]
        num_points = points.shape[0]

        image_idx, gt_idx = gt_mask.nonzero(as_tuple=True)  # [K] each, row-major (image, then GT index)
        num_boxes = image_idx.numel()
        if num_boxes == 0 or num_points == 0:
            labels = torch.full((num_images, num_points), -1, dtype=torch.int64, device=device)
            return FCOSTargets(
                labels=labels,
                ltrb=torch.zeros(num_images, num_points, 4, device=device),
                centerness=torch.zeros(num_images, num_points, device=device),
                matched_gt=labels.clone(),
            )

        boxes = gt_boxes[image_idx, gt_idx]  # [K, 4]
        # Rank boxes by (area, GT index); a stable sort keeps the lower index first among equal areas.
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])  # [K]
        if self.rule == "torchvision":  # torchvision's match score 1e8 - area, in float32: near areas tie
            area = -(1e8 - area)  # [K]
        order = torch.argsort(area, stable=True)  # [K] box index of each rank
        rank = torch.empty_like(order)
        rank[order] = torch.arange(num_boxes, device=device)  # [K]
        spacing = self.strides if point_strides is None else point_strides
        best = self._best_rank(
            boxes, rank, image_idx, heights, widths, num_images, num_points, spacing
        )  # [B*P]

        positive = (best < num_boxes).nonzero()[:, 0]  # [M] flat locations image * P + p
        winner = order.index_select(0, best.index_select(0, positive))  # [M] index into boxes
        box = boxes.index_select(0, winner)  # [M, 4]
        point = points.index_select(0, positive % num_points)  # [M, 2]
        pos_ltrb = xyxy_to_ltrb(point, box)  # [M, 4]
        flat = num_images * num_points
        labels = torch.full((flat,), -1, dtype=torch.int64, device=device)
        labels.index_copy_(0, positive, gt_labels[image_idx, gt_idx].long().index_select(0, winner))
        matched_gt = torch.full((flat,), -1, dtype=torch.int64, device=device)
        matched_gt.index_copy_(0, positive, gt_idx.index_select(0, winner))
        ltrb = torch.zeros(flat, 4, device=device).index_copy_(0, positive, pos_ltrb)  # [B*P, 4]
        centerness = torch.zeros(flat, device=device).index_copy_(0, positive, fcos_centerness(pos_ltrb))
        return FCOSTargets(
            labels=labels.view(num_images, num_points),
            ltrb=ltrb.view(num_images, num_points, 4),
            centerness=centerness.view(num_images, num_points),
            matched_gt=matched_gt.view(num_images, num_points),
        )

    def _best_rank(
        self,
        boxes: Tensor,
        rank: Tensor,
        image_idx: Tensor,
        heights: list[int],
        widths: list[int],
        num_images: int,
        num_points: int,
        spacing: Sequence[int] | Sequence[tuple[int, int]],
    ) -> Tensor:
        """Lowest rank among the boxes that claim each location.

        Args:
            boxes: the K real GT boxes of the batch (Tensor[K, 4] xyxy), in (image, GT index) order.
            rank: each box's place in the ranking order (Tensor[K] int64).
            image_idx: image of each box (Tensor[K] int64).
            spacing: each level's point spacing: its stride, or (stride_y, stride_x).

        Returns:
            Tensor[B * P] int64 indexed by ``image * P + location``: the lowest claiming rank, K where none.
        """
        device = boxes.device
        num_boxes, num_levels = boxes.shape[0], len(self.strides)
        torchvision = self.rule == "torchvision"
        offset = self.point_offset
        stride_t = torch.tensor(self.strides, dtype=torch.float32, device=device)  # [L]
        yx = [(s, s) if isinstance(s, int | float) else (s[0], s[1]) for s in spacing]
        step_y, step_x = torch.tensor(yx, dtype=torch.float32, device=device).unbind(-1)  # [L] each
        lo_t, hi_t = torch.tensor(self.regress_ranges, dtype=torch.float32, device=device).unbind(-1)  # [L]
        height_t = torch.tensor(heights, device=device)  # [L]
        width_t = torch.tensor(widths, device=device)  # [L]
        level_start = (height_t * width_t).cumsum(0) - height_t * width_t  # [L]
        x1, y1, x2, y2 = boxes.unbind(-1)  # [K] each
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2  # [K]
        expand = (num_boxes, num_levels)

        # Region whose strictly-inside points are candidates, per (box, level): [K, L] each.
        if self.center_sampling_radius is None:
            rx1, ry1, rx2, ry2 = (c[:, None].expand(expand) for c in (x1, y1, x2, y2))
        else:
            radius = stride_t * self.center_sampling_radius  # [L]
            rx1 = torch.maximum(cx[:, None] - radius, x1[:, None])
            ry1 = torch.maximum(cy[:, None] - radius, y1[:, None])
            rx2 = torch.minimum(cx[:, None] + radius, x2[:, None])
            ry2 = torch.minimum(cy[:, None] + radius, y2[:, None])

        # Cell index ranges whose points may lie in the region, one cell wider each side than needed so
        # rounding in the division never loses a candidate; the exact test below decides. [K, L] each.
        def cell_range(lo_edge: Tensor, hi_edge: Tensor, size: Tensor, step: Tensor) -> tuple[Tensor, Tensor]:
            last = (size - 1).float()  # [L]
            first_cell = torch.minimum((lo_edge / step - offset).floor().clamp(min=0.0), last + 1)
            last_cell = torch.minimum((hi_edge / step - offset).ceil(), last)
            return first_cell, (last_cell - first_cell + 1).clamp(min=0.0)

        fx0, nx = cell_range(rx1, rx2, width_t, step_x)  # [K, L] float, whole numbers
        fy0, ny = cell_range(ry1, ry2, height_t, step_y)  # [K, L]

        # A point strictly inside a box has max(w, h) / 2 <= max(ltrb) < max(w, h): skip levels whose range
        # cannot hold it (with a small tolerance; the exact size test runs on every candidate).
        max_side = torch.maximum(x2 - x1, y2 - y1)[:, None]  # [K, 1]
        tol = 1e-3 + 1e-5 * boxes.abs().amax(-1, keepdim=True)  # [K, 1] far above float32 rounding
        level_fits = (max_side * 0.5 <= hi_t + tol) & (max_side >= lo_t - tol)  # [K, L]
        counts = (nx * ny * level_fits).long().flatten()  # [K*L]
        starts = counts.cumsum(0) - counts  # [K*L]

        # Per (box, level) pair, everything its candidates need, gathered once per candidate below: columns
        # fx0, fy0, nx, step_x, step_y, lo, hi, x1, y1, x2, y2, then the centre test's region (rx1, ry1, rx2,
        # ry2) or, for the torchvision rule, (cx, cy, radius).
        columns = [fx0, fy0, nx, step_x.expand(expand), step_y.expand(expand), lo_t.expand(expand)]
        columns += [hi_t.expand(expand)] + [c[:, None].expand(expand) for c in (x1, y1, x2, y2)]
        if self.center_sampling_radius is not None:
            if torchvision:
                columns += [cx[:, None].expand(expand), cy[:, None].expand(expand), radius.expand(expand)]
            else:
                columns += [rx1, ry1, rx2, ry2]
        geometry = torch.stack(columns, dim=-1).flatten(0, 1)  # [K*L, F] float32
        base = image_idx[:, None] * num_points + level_start  # [K, L] flat index of each level's cell (0, 0)
        indices = torch.stack(
            [
                starts,
                base.flatten(),
                width_t.expand(expand).flatten(),
                rank[:, None].expand(expand).flatten(),
            ],
            dim=-1,
        )  # [K*L, 4] int64

        # Ragged expansion: one row per (box, level, cell) candidate.
        pair = torch.repeat_interleave(torch.arange(counts.numel(), device=device), counts)  # [N]
        cand = geometry.index_select(0, pair)  # [N, F]
        cand_idx = indices.index_select(0, pair)  # [N, 4]
        cell = torch.arange(pair.numel(), device=device) - cand_idx[:, 0]  # [N] cell number inside its pair
        row_len = cand[:, 2].double()  # [N]
        row = ((cell.double() + 0.5) / row_len).floor()  # [N] exact: the fraction is >= 0.5 / row_len
        fx = cand[:, 0] + (cell.double() - row * row_len).float()  # [N]
        fy = cand[:, 1] + row.float()  # [N]
        px, py = (fx + offset) * cand[:, 3], (fy + offset) * cand[:, 4]  # [N]

        left, top, right, bottom = px - cand[:, 7], py - cand[:, 8], cand[:, 9] - px, cand[:, 10] - py  # [N]
        reach = torch.maximum(torch.maximum(left, top), torch.maximum(right, bottom))  # [N]
        in_box = torch.minimum(torch.minimum(left, top), torch.minimum(right, bottom)) > 0  # [N]
        if self.center_sampling_radius is None:
            inside = in_box
        elif torchvision:  # torchvision: inside the box, and the centre distance test on its own
            centre_dist = torch.maximum((px - cand[:, 11]).abs(), (py - cand[:, 12]).abs())  # [N]
            inside = in_box & (centre_dist < cand[:, 13])
        else:
            inside = (
                torch.minimum(
                    torch.minimum(px - cand[:, 11], py - cand[:, 12]),
                    torch.minimum(cand[:, 13] - px, cand[:, 14] - py),
                )
                > 0
            )  # [N]
        if torchvision:
            keep = inside & (reach > cand[:, 5]) & (reach < cand[:, 6])  # [N]
        else:
            keep = inside & (reach >= cand[:, 5]) & (reach <= cand[:, 6])  # [N]

        # Rejected candidates go to a spare slot at the end; the lowest rank wins each location.
        loc = cand_idx[:, 1] + fy.long() * cand_idx[:, 2] + fx.long()  # [N]
        loc = torch.where(keep, loc, num_images * num_points)
        best = torch.full((num_images * num_points + 1,), num_boxes, dtype=torch.int64, device=device)
        best.scatter_reduce_(0, loc, cand_idx[:, 3], reduce="amin")  # [B*P + 1]
        return best[:-1]
