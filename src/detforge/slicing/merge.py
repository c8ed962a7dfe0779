"""Merging the detections of overlapping tiles: greedy NMS or greedy non-maximum merging (NMM), matched on
IoU or on intersection over the smaller area (IoS), class-aware.

Both are the greedy algorithms SAHI runs (``sahi.postprocess.combine``): boxes are taken best first; a taken
box removes (NMS) or absorbs (NMM) every remaining box of its group that matches it (``metric >=
match_thresh``, as SAHI). They are computed in parallel rounds, not one box at a time: the matching pairs are found
once (an x-sweep, :func:`detforge.postprocess.overlapping_pairs`, no N x N table), and each round takes
every remaining box that no remaining match beats; such a box is taken by the greedy loop too, since every
better box it matches has already been removed. An absorbed box goes to its best taken match (the first
one the greedy loop meets). NMM then grows the taken box member by member, best first, as SAHI's
``_apply_merge`` does: a member still matching the merged box so far is merged in (union box; the taken box's
score and label, SAHI's ``merge_object_prediction_pair``), one that no longer matches it is dropped.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from detforge.postprocess import overlapping_pairs

__all__ = ["MatchMetric", "MergeMethod", "match_pairs", "merge_detections"]

MergeMethod = Literal["nms", "nmm"]
MatchMetric = Literal["iou", "ios"]


def match_pairs(
    boxes: Tensor, groups: Tensor, match_metric: MatchMetric, match_thresh: float
) -> tuple[Tensor, Tensor]:
    """Pairs (i, j) of boxes of the same group whose IoU / IoS is at least ``match_thresh``, listed once.

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
    a, b = overlapping_pairs(boxes.detach().cpu().numpy(), groups.detach().cpu().numpy())  # [P] each
    a, b = torch.from_numpy(a).to(boxes.device), torch.from_numpy(b).to(boxes.device)
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
    match = (metric >= match_thresh).nonzero(as_tuple=True)[0]  # [E]
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
        merge: "nms" keeps the best box of each match cluster; "nmm" grows it into the union box of the
            cluster members that still match it as it grows (score and label of the best; see the module doc).
        match_metric: "iou" or "ios" (intersection over the smaller box's area: a box cut by a tile border
            lies inside the whole one, so its IoS is high while its IoU may be low).
        match_thresh: boxes match when the metric is at least this (> 0; above 1 nothing matches).
        groups: Tensor[N] int64 boxes that may match each other (default: the labels; pass image * C + label
            to merge several images at once).

    Returns:
        ``boxes`` (Tensor[K, 4]), ``scores`` (Tensor[K]), ``labels`` (Tensor[K] int64), best first, and
        ``index`` (Tensor[K] int64: the kept box of each, into the inputs).
    """
    if merge not in ("nms", "nmm"):
        raise ValueError(f"merge must be one of ('nms', 'nmm'), got {merge!r}")
    if not match_thresh > 0.0:
        raise ValueError(f"match_thresh must be > 0 (above 1: nothing matches), got {match_thresh}")
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
        out_boxes = _grow_clusters(boxes, scores, keep_mask, first, match_metric, match_thresh)[keep]
    return {"boxes": out_boxes, "scores": scores[keep], "labels": labels[keep], "index": keep}


def _grow_clusters(
    boxes: Tensor, scores: Tensor, keep_mask: Tensor, owner: Tensor, metric: MatchMetric, thresh: float
) -> Tensor:
    """Each kept box grown by its absorbed boxes (``owner``: Tensor[N], the kept box of each, N if none),
    best first, a member merged while it still matches the merged box: Tensor[N, 4] (rows of kept boxes)."""
    n = boxes.shape[0]
    merged = boxes.clone()  # [N, 4] the growing box of each kept one
    member = (~keep_mask & (owner < n)).nonzero(as_tuple=True)[0]  # [M]
    if member.numel() == 0:
        return merged
    member = member[scores[member].argsort(descending=True, stable=True)]  # best first ...
    member = member[owner[member].argsort(stable=True)]  # ... within each kept box
    ow = owner[member]  # [M] sorted
    rank = torch.arange(member.numel(), device=boxes.device) - torch.searchsorted(
        ow, ow
    )  # [M] place in cluster
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])  # [N]
    for r in range(int(rank.max()) + 1):  # the r-th member of every cluster at once
        at = rank == r
        m, k = member[at], ow[at]  # [S] each; distinct kept boxes
        box_m, box_k = boxes[m], merged[k]  # [S, 4] each
        wh = (torch.minimum(box_m[:, 2:], box_k[:, 2:]) - torch.maximum(box_m[:, :2], box_k[:, :2])).clamp(
            min=0
        )
        inter = wh[:, 0] * wh[:, 1]
        area_k = (box_k[:, 2] - box_k[:, 0]) * (box_k[:, 3] - box_k[:, 1])
        if metric == "iou":
            value = inter / (area[m] + area_k - inter).clamp(min=1e-9)
        else:
            value = inter / torch.minimum(area[m], area_k).clamp(min=1e-9)
        ok = value >= thresh
        m, k = m[ok], k[ok]
        merged[k] = torch.cat(
            [torch.minimum(merged[k, :2], boxes[m, :2]), torch.maximum(merged[k, 2:], boxes[m, 2:])], 1
        )
    return merged
