"""Precision/recall accumulation and the 12 summary numbers, with pycocotools' ``accumulate`` and
``summarize`` semantics, vectorised over categories and IoU thresholds.

Per (category, area range, max detections): detections of the category over all images (each image's list
cut to its first ``max_det``), sorted by score (ties: image order, then rank in the image), cumulative true
and false positives (ignored detections count as neither), precision ``tp / (tp + fp + eps)`` made
non-increasing from the right, and sampled at 101 recall points with "first index whose recall reaches the
point" (``searchsorted(side="left")``); points past the last recall read 0. Categories without counted ground
truth read -1.
"""

from __future__ import annotations

import numpy as np

__all__ = ["accumulate", "summarize", "summary_spec"]

_EPS = np.spacing(1)


def _min_counts(recall_thresholds: np.ndarray, num_gt: np.ndarray) -> np.ndarray:
    """Smallest integer ``c`` with ``c / n >= thr`` in float64, for each ``n`` in ``num_gt`` (int64 [K]) and
    threshold (float64 [R]) -> int64 [K, R]. Equivalent to searching ``tp / n`` exactly as pycocotools does."""
    n = np.maximum(num_gt, 1).astype(np.float64)[:, None]  # [K, 1]
    thr = recall_thresholds[None, :]  # [1, R]
    c = np.maximum(np.ceil(thr * n), 0).astype(np.int64)  # [K, R]
    for _ in range(2):
        c -= (c > 0) & ((c - 1) / n >= thr)
    for _ in range(2):
        c += c / n < thr
    return c


def _counted_before(
    t: np.ndarray, p: np.ndarray, n: int, base: np.ndarray, key: np.ndarray, delta_cum: np.ndarray
) -> np.ndarray:
    """Counted detections in positions [0, p) under threshold t (int64 [P] each): the unmatched count
    ``base`` [n + 1] plus the corrections of the matches (sorted ``key`` = t * (n + 1) + position, and
    ``delta_cum``, the running sum of their corrections with a leading 0) that lie before p on row t."""
    row = t * (n + 1)
    return base[p] + delta_cum[np.searchsorted(key, row + p)] - delta_cum[np.searchsorted(key, row)]


def accumulate(
    *,
    det_category: np.ndarray,
    det_image: np.ndarray,
    det_rank: np.ndarray,
    det_scores: np.ndarray,
    det_out_of_range: np.ndarray,
    match_thr: np.ndarray,
    match_area: np.ndarray,
    match_det: np.ndarray,
    match_tp: np.ndarray,
    match_counted: np.ndarray,
    num_thresholds: int,
    num_gt: np.ndarray,
    num_categories: int,
    recall_thresholds: np.ndarray,
    max_detections: list[int],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and score arrays in pycocotools' layout.

    An unmatched detection is a false positive unless it lies outside the area range (then ignored); matches
    say for themselves. So the running count of counted detections is one count per area range plus sparse
    corrections at matches, and precision is only needed at true positives: between two of them precision
    only falls, so the maximum precision from any point on is reached at a true positive.

    Args:
        det_category, det_image, det_rank (int64 [D]): category index, image index, rank in its
            (image, category) group.
        det_scores (float64 [D]).
        det_out_of_range (bool [A, D]): detection area outside area range a.
        match_thr, match_area, match_det (int64 [N]): threshold index, area range index and detection of
            each match.
        match_tp (bool [N]): the match is a counted true positive.
        match_counted (bool [N]): the matched detection counts at all (true positive, or a match to a gt with
            id 0, which pycocotools counts as a false positive).
        num_thresholds (int): T.
        num_gt (int64 [K, A]): counted ground truths per category and area range.
        num_categories (int): K.
        recall_thresholds (float64 [R]).
        max_detections (list[int], M): per image and category.

    Returns:
        precision (float64 [T, R, K, A, M]), recall (float64 [T, K, A, M]), scores (float64 [T, R, K, A, M]).
    """
    num_thr, num_area = num_thresholds, det_out_of_range.shape[0]
    num_k, num_r, num_m = num_categories, len(recall_thresholds), len(max_detections)
    precision = -np.ones((num_thr, num_r, num_k, num_area, num_m))
    recall = -np.ones((num_thr, num_k, num_area, num_m))
    scores = -np.ones((num_thr, num_r, num_k, num_area, num_m))
    order = np.lexsort((det_rank, det_image, -det_scores, det_category))  # [D] category, score, image, rank
    acc_pos = np.empty(len(order), dtype=np.int64)  # [D] position of each detection in accumulation order
    acc_pos[order] = np.arange(len(order))
    rank_sorted = det_rank[order]  # [D]
    # Matches sorted by (area range, threshold, accumulation position).
    m_pos = acc_pos[match_det]  # [N]
    m_order = np.lexsort((m_pos, match_thr, match_area))
    m_area, m_thr, m_pos = match_area[m_order], match_thr[m_order], m_pos[m_order]
    m_tp = match_tp[m_order]
    # Change to the counted-detection count that each match makes against "unmatched" (-1, 0 or +1).
    m_delta = match_counted[m_order].astype(np.int64) - ~det_out_of_range[m_area, match_det[m_order]]
    area_bounds = np.searchsorted(m_area, np.arange(num_area + 1))  # [A + 1]
    cats = np.arange(num_k)
    lanes = np.arange(num_thr * num_k)  # one lane per (threshold, category)
    min_counts = [_min_counts(recall_thresholds, num_gt[:, a]) for a in range(num_area)]  # A x [K, R]
    for m, max_det in enumerate(max_detections):
        keep = rank_sorted < max_det  # [D]
        sel = order[keep]  # [n] this setting's detections, in accumulation order
        new_pos = np.cumsum(keep) - 1  # [D] accumulation position -> position in sel
        n = len(sel)
        cat_of = det_category[sel]  # [n]
        seg_start = np.searchsorted(cat_of, cats, side="left")  # [K]
        seg_end = np.searchsorted(cat_of, cats, side="right")  # [K]
        sorted_scores = np.append(det_scores[sel], 0.0)  # [n + 1]
        for a in range(num_area):
            has_gt = num_gt[:, a] > 0  # [K]
            min_count = min_counts[a]  # [K, R]
            lo, hi = area_bounds[a], area_bounds[a + 1]
            base = np.zeros(n + 1, dtype=np.int64)  # counted detections before each position if none matched
            np.cumsum(~det_out_of_range[a, sel], out=base[1:])
            kept = keep[m_pos[lo:hi]]
            t_m, p_m = m_thr[lo:hi][kept], new_pos[m_pos[lo:hi][kept]]  # [N'] sorted by (t, p)
            key = t_m * (n + 1) + p_m  # [N'] ascending
            delta_cum = np.concatenate([[0], np.cumsum(m_delta[lo:hi][kept])])  # [N' + 1]

            tp_sel = np.flatnonzero(m_tp[lo:hi][kept])
            t_idx, pos = t_m[tp_sel], p_m[tp_sel]  # true positives, sorted by (threshold, position)
            cat_tp = cat_of[pos]  # [P]
            lane = t_idx * num_k + cat_tp  # [P] ascending
            lane_first = np.searchsorted(lane, lanes)  # [T * K] first true positive of each lane
            tp_total = np.bincount(lane, minlength=num_thr * num_k)  # [T * K]
            tp_count = np.arange(len(pos)) - lane_first[lane] + 1  # [P] running tp count in the lane
            # Counted detections of the category up to and including each true positive: tp + fp there.
            seen = _counted_before(t_idx, pos + 1, n, base, key, delta_cum) - _counted_before(
                t_idx, seg_start[cat_tp], n, base, key, delta_cum
            )  # [P]
            pr = tp_count / (seen.astype(np.float64) + _EPS)  # [P]: pycocotools' tp / (fp + tp + eps)

            # Recall point r is first reached at the c-th true positive (c = min_count); the precision there
            # is the max over the lane's true positives from that one on (0 when the lane never gets there).
            c = np.broadcast_to(min_count[None], (num_thr, num_k, num_r)).reshape(num_thr * num_k, num_r)
            total = tp_total[:, None]  # [T * K, 1]
            reached = np.maximum(c, 1) <= total  # [T * K, R]
            lane_end = (lane_first + tp_total)[:, None]  # [T * K, 1]
            start = np.minimum(lane_first[:, None] + np.maximum(c - 1, 0), lane_end)  # [T * K, R]
            bounds = np.concatenate([start, lane_end], axis=1).ravel()  # [T * K * (R + 1)], non-decreasing
            pieces = np.maximum.reduceat(np.append(pr, 0.0), bounds).reshape(num_thr * num_k, num_r + 1)
            pieces = np.where(reached, pieces[:, :num_r], 0.0)  # [T * K, R]
            q = np.maximum.accumulate(pieces[:, ::-1], axis=1)[:, ::-1]  # [T * K, R]
            # Score at each recall point: the c-th true positive's, or the category's first detection for c = 0.
            tp_pos = np.append(pos, 0)[np.minimum(start, len(pos))]  # [T * K, R]
            first_pos = np.broadcast_to(seg_start[None, :, None], (num_thr, num_k, 1)).reshape(-1, 1)
            nonempty = np.broadcast_to((seg_end > seg_start)[None, :, None], (num_thr, num_k, 1)).reshape(
                -1, 1
            )
            score_pos = np.where(c == 0, first_pos, tp_pos)  # [T * K, R]
            score_ok = np.where(c == 0, nonempty, reached)  # [T * K, R]
            ss = np.where(score_ok, sorted_scores[np.minimum(score_pos, n)], 0.0)  # [T * K, R]

            gt_mask = has_gt[None, :, None]  # [1, K, 1]
            q = q.reshape(num_thr, num_k, num_r)
            ss = ss.reshape(num_thr, num_k, num_r)
            precision[:, :, :, a, m] = np.where(gt_mask, q, -1.0).transpose(0, 2, 1)
            scores[:, :, :, a, m] = np.where(gt_mask, ss, -1.0).transpose(0, 2, 1)
            rec = tp_total.reshape(num_thr, num_k) / np.maximum(num_gt[:, a], 1)  # [T, K]
            recall[:, :, a, m] = np.where(has_gt[None, :], rec, -1.0)
    return precision, recall, scores


def summary_spec(max_detections: list[int]) -> list[tuple[bool, float | None, str, int]]:
    """The 12 COCO summary lines: (is_ap, iou_threshold or None for all, area label, max detections).

    pycocotools reads the first line at a literal 100 detections and the others at ``maxDets[0..2]``; with
    the default (1, 10, 100) both are the same, and with other settings every line uses the settings given
    (as torchmetrics does)."""
    md = list(max_detections) + [max_detections[-1]] * (3 - len(max_detections))
    return [
        (True, None, "all", md[-1]),
        (True, 0.5, "all", md[2]),
        (True, 0.75, "all", md[2]),
        (True, None, "small", md[2]),
        (True, None, "medium", md[2]),
        (True, None, "large", md[2]),
        (False, None, "all", md[0]),
        (False, None, "all", md[1]),
        (False, None, "all", md[2]),
        (False, None, "small", md[2]),
        (False, None, "medium", md[2]),
        (False, None, "large", md[2]),
    ]


def _mean_valid(s: np.ndarray) -> float:
    valid = s[s > -1]
    return -1.0 if valid.size == 0 else float(np.mean(valid))


def summarize(
    precision: np.ndarray,
    recall: np.ndarray,
    *,
    iou_thresholds: np.ndarray,
    area_labels: list[str],
    max_detections: list[int],
) -> np.ndarray:
    """The 12 COCO numbers (float64 [12]) from ``precision`` [T, R, K, A, M] and ``recall`` [T, K, A, M],
    as pycocotools' ``summarize`` computes them (-1 where nothing is defined)."""
    stats = np.zeros(12)
    for i, (is_ap, iou, area, max_det) in enumerate(summary_spec(max_detections)):
        a_idx = [j for j, lbl in enumerate(area_labels) if lbl == area]
        m_idx = [j for j, md in enumerate(max_detections) if md == max_det]
        s = precision if is_ap else recall
        if iou is not None:
            s = s[np.where(iou == iou_thresholds)[0]]
        s = s[..., a_idx, :][..., m_idx]
        stats[i] = _mean_valid(s)
    return stats
