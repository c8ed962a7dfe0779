"""Greedy COCO matching of detections to ground truth, every image, category, IoU threshold and area range
at once.

The rules are pycocotools' ``evaluateImg``: detections of one (image, category) group are taken highest score
first (stable in input order); each takes, among the ground truths it overlaps by at least the threshold and
that are still free (crowds never stop being free), a counted one before an ignored one, then the highest IoU,
then the later one in input order. Crowd IoU divides by the detection's area.

Instead of looping over images and categories, the loop runs over the detection's rank inside its group
(at most ``max_det`` steps): step ``r`` matches the r-th detection of every group for every threshold and
area range with one set of array operations over the (detection, ground truth) pairs of those groups.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Matches", "pair_iou", "match_groups"]


def pair_iou(dt_boxes: np.ndarray, gt_boxes: np.ndarray, gt_crowd: np.ndarray) -> np.ndarray:
    """IoU of paired boxes, computed exactly as pycocotools' ``bbIou`` does (same operations, float64).

    Args:
        dt_boxes (float64 [P, 4]): detection ``[x, y, w, h]`` of each pair.
        gt_boxes (float64 [P, 4]): ground-truth ``[x, y, w, h]`` of each pair.
        gt_crowd (bool [P]): crowd pairs divide by the detection's area instead of the union.

    Returns:
        float64 [P]: IoU, 0 where the boxes do not overlap.
    """
    dx, dy, dw, dh = dt_boxes.T
    gx, gy, gw, gh = gt_boxes.T
    w = np.minimum(dw + dx, gw + gx) - np.maximum(dx, gx)
    h = np.minimum(dh + dy, gh + gy) - np.maximum(dy, gy)
    overlap = (w > 0) & (h > 0)
    inter = w * h
    d_area = dw * dh
    union = np.where(gt_crowd, d_area, d_area + gw * gh - inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / union
    return np.where(overlap, iou, 0.0)


@dataclass(frozen=True)
class Matches:
    """Result of ``match_groups``: one row per match (detections not listed are unmatched).

    Attributes:
        thr (int64 [N]): IoU threshold index of the match.
        area (int64 [N]): area range index.
        det (int64 [N]): detection index (into the sorted detection arrays).
        gt (int64 [N]): matched ground truth index (into the sorted gt arrays).
    """

    thr: np.ndarray
    area: np.ndarray
    det: np.ndarray
    gt: np.ndarray

    @classmethod
    def empty(cls) -> Matches:
        z = np.zeros(0, dtype=np.int64)
        return cls(z, z, z, z)


def match_groups(
    *,
    det_group: np.ndarray,
    det_rank: np.ndarray,
    det_boxes: np.ndarray,
    gt_group: np.ndarray,
    gt_boxes: np.ndarray,
    gt_crowd: np.ndarray,
    gt_ignore: np.ndarray,
    iou_thresholds: np.ndarray,
) -> Matches:
    """Match every detection of every (image, category) group.

    Args:
        det_group (int64 [D]): group id of each detection; detections sorted by (group, rank).
        det_rank (int64 [D]): 0 for the group's highest-scoring detection, 1 for the next, ...
        det_boxes (float64 [D, 4]): ``[x, y, w, h]``.
        gt_group (int64 [G]): group id of each ground truth, sorted ascending (input order inside a group).
        gt_boxes (float64 [G, 4]): ``[x, y, w, h]``.
        gt_crowd (bool [G]): crowd regions.
        gt_ignore (bool [A, G]): ground truth not counted under area range ``a`` (crowd, ignore, out of range).
        iou_thresholds (float64 [T]).

    Returns:
        Matches: one row per (threshold, area range, detection) that found a ground truth.
    """
    num_det, num_gt = len(det_group), len(gt_group)
    num_thr, num_area = len(iou_thresholds), gt_ignore.shape[0]
    if num_det == 0 or num_gt == 0:
        return Matches.empty()

    # Pairs: every detection with every ground truth of its group, sorted by (rank, detection, gt order).
    gt_first = np.searchsorted(gt_group, det_group, side="left")  # [D]
    gt_count = np.searchsorted(gt_group, det_group, side="right") - gt_first  # [D]
    order = np.argsort(det_rank, kind="stable")  # detections by rank, then by group
    counts = gt_count[order]  # [D]
    pair_det = np.repeat(order, counts)  # [P]
    starts = np.cumsum(counts) - counts  # [D] first pair of each detection
    pair_gt = np.repeat(gt_first[order], counts) + (
        np.arange(len(pair_det)) - np.repeat(starts, counts)
    )  # [P]
    if len(pair_det) == 0:
        return Matches.empty()
    pair_iou_all = pair_iou(det_boxes[pair_det], gt_boxes[pair_gt], gt_crowd[pair_gt])  # [P]
    # Non-negative float64 bits sort like the floats; bit 62 (above every IoU <= 1) marks a counted gt.
    pair_key = pair_iou_all.view(np.int64)  # [P]
    rank_bounds = np.searchsorted(det_rank[pair_det], np.arange(int(det_rank.max()) + 2))  # [R + 1]

    thresholds = np.minimum(np.asarray(iou_thresholds, np.float64), 1 - 1e-10)[:, None, None]  # [T, 1, 1]
    gt_taken = np.zeros((num_thr, num_area, num_gt), dtype=bool)  # [T, A, G]
    counted_bit = np.where(~gt_ignore, np.int64(1) << 62, np.int64(0))  # [A, G]
    found = []
    for r in range(len(rank_bounds) - 1):
        lo, hi = rank_bounds[r], rank_bounds[r + 1]
        if lo == hi:
            continue
        p_det, p_gt, p_iou = pair_det[lo:hi], pair_gt[lo:hi], pair_iou_all[lo:hi]  # [Pr]
        new_det = np.empty(len(p_det), dtype=bool)
        new_det[0] = True
        np.not_equal(p_det[1:], p_det[:-1], out=new_det[1:])
        seg_start = np.flatnonzero(new_det)  # [S] first pair of each detection
        seg_of_pair = np.cumsum(new_det) - 1  # [Pr]
        free = ~gt_taken[:, :, p_gt] | gt_crowd[p_gt]  # [T, A, Pr]
        cand = free & (p_iou >= thresholds)  # [T, A, Pr]
        key = np.where(cand, counted_bit[:, p_gt] | pair_key[lo:hi], -1)  # [T, A, Pr]
        best = np.maximum.reduceat(key, seg_start, axis=2)  # [T, A, S]
        is_best = cand & (key == best[:, :, seg_of_pair])  # [T, A, Pr]
        pos = np.where(is_best, np.arange(hi - lo), -1)  # [T, A, Pr]
        chosen = np.maximum.reduceat(pos, seg_start, axis=2)  # [T, A, S]: last best pair, -1 if none
        hit = chosen >= 0  # [T, A, S]
        if not hit.any():
            continue
        t_idx, a_idx, s_idx = np.nonzero(hit)
        g = p_gt[chosen[hit]]
        gt_taken[t_idx, a_idx, g] = True
        found.append((t_idx, a_idx, p_det[seg_start[s_idx]], g))
    if not found:
        return Matches.empty()
    return Matches(*(np.concatenate(parts).astype(np.int64) for parts in zip(*found)))
