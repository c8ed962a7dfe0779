"""Merging the detections of overlapping tiles: greedy NMS or greedy non-maximum merging (NMM), matched on
IoU or on intersection over the smaller area (IoS), class-aware.

Both are the greedy algorithms SAHI runs (``sahi.postprocess.combine``): boxes are taken best first; a taken
box removes (NMS) or absorbs (NMM) every remaining box of its group that matches it (``metric >
match_thresh``). They are computed in parallel rounds, not one box at a time: the matching pairs are found
once (an x-sweep, :func:`detforge.postprocess._same_group_x_overlaps`, no N x N table), and each round takes
every remaining box that no remaining match beats; such a box is taken by the greedy loop too, since every
better box it matches has already been removed. An absorbed box goes to its best taken match (the first
one the greedy loop meets); a merged detection is the union box of its members with the taken box's score and
label (SAHI's ``merge_object_prediction_pair``: union box, the higher score, its category).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from detforge.postprocess import _same_group_x_overlaps

__all__ = ["MatchMetric", "MergeMethod", "match_pairs", "merge_detections"]

MergeMethod = Literal["nms", "nmm"]
MatchMetric = Literal["iou", "ios"]


def match_pairs(
    boxes: Tensor, groups: Tensor, match_metric: MatchMetric, match_thresh: float
) -> tuple[Tensor, Tensor]:
    """Pairs (i, j) of boxes of the same group whose IoU / IoS exceeds ``match_thresh``, listed once.

    Args:
        boxes: Tensor[N, 4] xyxy; groups: Tensor[N] int64.

    Returns:
        two Tensor[E] int64 of indices into the boxes.
    """
    if match_metric not in ("iou", "ios"):
        raise ValueError(f"match_metric must be one of ('iou', 'ios'), got {match_metric!r}")
    if boxes.shape[0] == 0:
        empty = torch.zeros(0, dtype=torch.int64, device=boxes.device)
        return empty, empty
    a, b = _same_group_x_overlaps(boxes, groups)  # [P] each
    box_a, box_b = boxes.index_select(0, a), boxes.index_select(0, b)  # [P, 4] each
    wh = (torch.minimum(box_a[:, 2:], box_b[:, 2:]) - torch.maximum(box_a[:, :2], box_b[:, :2])).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]  # [P]
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])  # [N]
    area_a, area_b = area.index_select(0, a), area.index_select(0, b)  # [P] each
    if match_metric == "iou":
        denominator = area_a + area_b - inter
    else:
        denominator = torch.minimum(area_a, area_b)
    metric = inter / denominator.clamp(min=1e-9)  # [P]
    match = (metric > match_thresh).nonzero(as_tuple=True)[0]  # [E]
    return a.index_select(0, match), b.index_select(0, match)


def _greedy_keep(scores: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Greedy NMS on a match graph: Tensor[N] bool, the boxes kept (ties: the lower index first)."""
    n = scores.shape[0]
    alive = torch.ones(n, dtype=torch.bool, device=scores.device)
    kept = torch.zeros_like(alive)
    while a.numel():
        sa, sb = scores.index_select(0, a), scores.index_select(0, b)  # [E] each
        loser = torch.where((sa > sb) | ((sa == sb) & (a < b)), b, a)  # [E]
        take = alive & (torch.bincount(loser, minlength=n) == 0)  # [N] no remaining match beats it
        kept |= take
        alive &= ~take
        ta, tb = take.index_select(0, a), take.index_select(0, b)  # [E] each
        removed = torch.zeros_like(alive).index_fill_(0, torch.cat([b[ta], a[tb]]), True)
        alive &= ~removed
        live = (alive.index_select(0, a) & alive.index_select(0, b)).nonzero(as_tuple=True)[0]
        a, b = a.index_select(0, live), b.index_select(0, live)
    return kept | alive  # boxes left without a remaining match are kept


def merge_detections(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    merge: MergeMethod = "nms",
    match_metric: MatchMetric = "ios",
    match_thresh: float = 0.5,
    groups: Tensor | None = None,
) -> dict[str, Tensor]:
    """Merge duplicate detections (e.g. of one object cut by tile borders), class-aware.

    Args:
        boxes: Tensor[N, 4] xyxy; scores: Tensor[N]; labels: Tensor[N] int64.
        merge: "nms" keeps the best box of each match cluster; "nmm" replaces it by the union box of the
            cluster (score and label of the best).
        match_metric: "iou" or "ios" (intersection over the smaller box's area: a box cut by a tile border
            lies inside the whole one, so its IoS is high while its IoU may be low).
        match_thresh: boxes match when the metric is above it.
        groups: Tensor[N] int64 boxes that may match each other (default: the labels; pass image * C + label
            to merge several images at once).

    Returns:
        ``boxes`` (Tensor[K, 4]), ``scores`` (Tensor[K]), ``labels`` (Tensor[K] int64), best first, and
        ``index`` (Tensor[K] int64: the kept box of each, into the inputs).
    """
    if merge not in ("nms", "nmm"):
        raise ValueError(f"merge must be one of ('nms', 'nmm'), got {merge!r}")
    if not 0.0 <= match_thresh <= 1.0:
        raise ValueError(f"match_thresh must be in [0, 1], got {match_thresh}")
    groups = labels if groups is None else groups
    a, b = match_pairs(boxes, groups, match_metric, match_thresh)
    keep_mask = _greedy_keep(scores, a, b)  # [N]
    keep = keep_mask.nonzero(as_tuple=True)[0]
    keep = keep[scores[keep].argsort(descending=True, stable=True)]  # [K] best first
    out_boxes = boxes[keep]
    if merge == "nmm" and a.numel():
        # each absorbed box joins its best kept match: the first the greedy loop meets
        src = torch.cat([a, b])  # [2E] the kept end
        dst = torch.cat([b, a])  # [2E] the absorbed end
        pick = keep_mask[src] & ~keep_mask[dst]
        src, dst = src[pick], dst[pick]
        n = boxes.shape[0]
        best = torch.full((n,), -1.0, dtype=scores.dtype, device=boxes.device).scatter_reduce(
            0, dst, scores[src], "amax"
        )  # [N] best kept score matching each absorbed box
        first = src.new_full((n,), n).scatter_reduce(
            0, dst, torch.where(scores[src] == best[dst], src, src.new_full(src.shape, n)), "amin"
        )  # [N] the kept box each absorbed box joins (n if none); equal scores: the lower index
        owner = torch.where(keep_mask, torch.arange(n, device=boxes.device), first)  # [N]
        member = owner < n
        owner, member_boxes = owner[member][:, None].expand(-1, 2), boxes[member]  # [M, 2], [M, 4]
        lo = boxes[:, :2].clone().scatter_reduce(0, owner, member_boxes[:, :2], "amin")  # [N, 2]
        hi = boxes[:, 2:].clone().scatter_reduce(0, owner, member_boxes[:, 2:], "amax")  # [N, 2]
        out_boxes = torch.cat([lo[keep], hi[keep]], dim=1)  # [K, 4] union box of each cluster
    return {"boxes": out_boxes, "scores": scores[keep], "labels": labels[keep], "index": keep}
