"""Turn dense detector outputs into detections: location grids, box decoding, per-level top-k, NMS.

Every step works on the whole batch at once; the only per-image work is the final split into one dict per
image. :func:`detect_padded` is the same pipeline with fixed-size outputs for ONNX graphs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import numpy as np
import torch
from torch import Tensor

from detforge.boxes import grid_points, ltrb_to_xyxy
from detforge.models.base import NMSMethod, check_nms_method
from detforge.nms import grouped_nms

__all__ = [
    "NMSMethod",
    "batched_soft_nms",
    "detect",
    "detect_padded",
    "distances_to_boxes",
    "make_points",
    "overlapping_pairs",
    "select_candidates",
]

NMS_METHODS = get_args(NMSMethod)


make_points = grid_points  # the geometry module's location grid (cell centres)
distances_to_boxes = ltrb_to_xyxy  # the geometry module's FCOS decoding


def select_candidates(
    scores: Tensor,
    boxes: Tensor,
    level_sizes: Sequence[int],
    score_thresh: float,
    pre_nms_topk: int,
    return_points: bool = False,
) -> tuple[Tensor, ...]:
    """Per image and level, the ``pre_nms_topk`` best (location, class) pairs scoring above ``score_thresh``.

    Args:
        scores: Tensor[B, P, C] class probabilities.
        boxes: Tensor[B, P, 4] decoded xyxy boxes.
        level_sizes: locations per level (sum = P).

    Returns:
        image index (Tensor[N] int64), box (Tensor[N, 4]), score (Tensor[N]) and label (Tensor[N] int64) of
        the N candidates of the batch; with ``return_points`` also their location index (Tensor[N] int64,
        into P), to gather per-location extras alongside.
    """
    num_images, num_points, num_classes = scores.shape
    if sum(level_sizes) != num_points:
        raise ValueError(f"level sizes {list(level_sizes)} do not add up to the {num_points} locations")
    top_scores, top_index = [], []
    start = 0
    for size in level_sizes:
        level = scores[:, start : start + size].reshape(num_images, size * num_classes)  # [B, P_l * C]
        k = min(pre_nms_topk, size * num_classes)
        s, i = level.topk(k, dim=1)  # [B, k] each
        top_scores.append(s)
        top_index.append(i + start * num_classes)
        start += size
    top_s = torch.cat(top_scores, dim=1)  # [B, K]
    top_i = torch.cat(top_index, dim=1)  # [B, K] flat index into P * C
    image_idx, k_idx = (top_s > score_thresh).nonzero(as_tuple=True)  # [N] each
    flat = top_i[image_idx, k_idx]  # [N]
    point_idx = torch.div(flat, num_classes, rounding_mode="floor")  # [N]
    labels = flat % num_classes  # [N]
    selected = (image_idx, boxes[image_idx, point_idx], top_s[image_idx, k_idx], labels)
    return (*selected, point_idx) if return_points else selected


def _x_sweep(x: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every pair (i, j) of intervals with the same key whose extents overlap, listed once: int64 arrays [P].

    Keys are shifted apart, intervals sorted by left end, and each pairs with the later-starting intervals
    that start before its right end (a contiguous run of the order).

    Args:
        x: float64 array [N, 2] (left, right); keys: int array [N].
    """
    n = x.shape[0]
    span = max(float(x[:, 1].max() - x[:, 0].min()), 0.0) + 1.0
    x = x + (keys * 2.0 * span)[:, None]  # keys far apart: no cross-key pair
    order = np.argsort(x[:, 0], kind="stable")  # [N]
    left, right = x[order, 0], x[order, 1]  # [N] each, sorted by left end
    # [N] the first sorted interval starting at or after each right end
    stop = np.searchsorted(left, right, side="left")
    begin = np.arange(1, n + 1)  # [N] the next interval in the order
    counts = np.maximum(stop - begin, 0)  # [N] partners of each sorted interval
    first = np.repeat(np.arange(n), counts)  # [P]
    second = np.arange(first.shape[0]) + (begin - (np.cumsum(counts) - counts))[first]  # [P]
    return order[first], order[second]


def overlapping_pairs(boxes: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every pair (i, j) of boxes of the same group whose intersection is not empty, listed once: two int64
    arrays [P] of indices into the boxes.

    No N x N table: boxes are cut into horizontal bands (twice the median box height, at most 64 bands; a
    box joins each band it touches), the boxes of each (group, band) are swept along x (:func:`_x_sweep`),
    the pairs whose y extents overlap too are kept, each in the band of its intersection's top edge only.
    numpy, not torch: on ~1,000 boxes the cost is per-call overhead, a few microseconds per numpy call
    against ~10 for a torch op.

    Args:
        boxes: float array [N, 4] xyxy; groups: int array [N].
    """
    n = boxes.shape[0]
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    dense = np.unique(groups, return_inverse=True)[1].reshape(-1)  # [N] 0..G-1
    y = boxes[:, 1::2].astype(np.float64)  # [N, 2] (y1, y2)
    y1, y2 = np.ascontiguousarray(y.T)  # [N] each: 1-D gathers are the cheap ones
    top, height = float(y1.min()), float(np.median(y2 - y1))
    band = max(2.0 * height, (float(y2.max()) - top) / 64.0, 1e-6)
    first_band, last_band = ((y - top) // band).astype(np.int64).T  # [N] each
    reps = np.maximum(last_band - first_band, 0) + 1  # [N] bands each box touches
    owner = np.repeat(np.arange(n), reps)  # [R] the box of each (box, band) entry
    band_id = first_band[owner] + np.arange(owner.shape[0]) - (np.cumsum(reps) - reps)[owner]  # [R]
    keys = dense[owner] * int(band_id.max() + 1) + band_id  # [R] one key per (group, band)
    p, q = _x_sweep(boxes[owner, 0::2].astype(np.float64), keys)  # [P'] entries, x extents overlap
    i, j = owner[p], owner[q]  # [P'] boxes
    meet = (np.minimum(y2[i], y2[j]) > np.maximum(y1[i], y1[j])) & (
        band_id[p] == np.maximum(first_band[i], first_band[j])
    )  # [P'] y extents overlap, counted in one band
    return i[meet], j[meet]


def batched_soft_nms(
    boxes: Tensor,
    scores: Tensor,
    groups: Tensor,
    method: Literal["gaussian", "linear"] = "gaussian",
    sigma: float = 0.5,
    iou_thresh: float = 0.3,
    score_thresh: float = 0.001,
) -> tuple[Tensor, Tensor]:
    """Soft-NMS (Bodla et al. 2017) inside each group of boxes, all groups at once.

    The result is the textbook sequential algorithm's: repeatedly take the best remaining box of a group and
    decay the scores of the rest of its group, ``s *= exp(-iou^2 / sigma)`` (gaussian) or ``s *= 1 - iou``
    where ``iou > iou_thresh`` (linear); a box whose score falls below ``score_thresh`` is dropped (ties: the
    lower index first). It is computed in parallel rounds: the boxes that interact (gaussian: IoU > 0,
    linear: IoU > ``iou_thresh``) are found once (:func:`overlapping_pairs`), and each round takes at once
    every box that beats all the remaining boxes it interacts with (the sequential algorithm takes them at
    those same scores, since only interacting boxes decay each other and decays commute). Rounds = the
    longest chain of interacting boxes, not the group size. Computed in float64 when the boxes or scores are
    float64, else float32, in numpy on the CPU (the rounds are a few dozen small steps; the result goes back
    to the inputs' device).

    Args:
        boxes: Tensor[N, 4] xyxy.
        scores: Tensor[N].
        groups: Tensor[N] int64; boxes of different groups never suppress each other (use image * C + class).

    Returns:
        kept indices into the inputs (Tensor[K] int64, by decayed score, best first) and their decayed
        scores (Tensor[K], the dtype of ``scores``).
    """
    if method not in ("gaussian", "linear"):
        raise ValueError(f"soft-NMS method must be one of ('gaussian', 'linear'), got {method!r}")
    device = boxes.device
    out_dtype = scores.dtype if scores.is_floating_point() else torch.float32
    dtype = torch.float64 if torch.float64 in (boxes.dtype, scores.dtype) else torch.float32
    all_scores = scores.detach().to("cpu", dtype).numpy()  # [N]
    cand = np.flatnonzero(all_scores >= score_thresh)  # [M] boxes that start alive
    box = boxes.detach().to("cpu", dtype).numpy()[cand]  # [M, 4]
    work = all_scores[cand]  # [M] decayed scores
    m = cand.shape[0]
    a, b = overlapping_pairs(box, groups.detach().cpu().numpy()[cand])  # [P] each
    x1, y1, x2, y2 = np.ascontiguousarray(box.T)  # [M] each: 1-D gathers are the cheap ones
    wx = np.minimum(x2[a], x2[b]) - np.maximum(x1[a], x1[b])  # [P] > 0
    wy = np.minimum(y2[a], y2[b]) - np.maximum(y1[a], y1[b])  # [P] > 0
    inter = wx * wy  # [P]
    area = (x2 - x1) * (y2 - y1)  # [M]
    iou = inter / np.maximum(area[a] + area[b] - inter, work.dtype.type(1e-9))  # [P] > 0
    if method == "linear":  # gaussian: every overlapping pair interacts
        edge = iou > iou_thresh  # [P] interacting
        a, b, iou = a[edge], b[edge], iou[edge]  # [E] each
    a, b = np.minimum(a, b), np.maximum(a, b)  # a < b: on equal scores a wins
    if method == "gaussian":
        decay = np.exp(-(iou * iou) / work.dtype.type(sigma))  # [E] in (0, 1]
    else:
        decay = 1.0 - iou  # [E]
    total = a + b  # [E] an edge's other end is total - this end
    final = np.full_like(work, np.nan)  # [M] score at the time a box is taken, NaN while not taken
    # every edge joins two alive boxes (edges are pruned each round); a taken box scores -inf from then on
    alive = work >= score_thresh  # [M]
    while alive.any():
        # a box is taken when alive and no neighbour beats it (score, then lower index)
        loser = np.where(work[a] >= work[b], b, a)  # [E]
        take = np.bincount(loser, minlength=m) < alive  # [M] no edge lost and alive
        np.copyto(final, work, where=take)
        # two neighbours are never taken in the same round: the loser of a taken box's edge decays
        hit = take[total - loser]  # [E] the winner was taken
        np.multiply.at(work, loser[hit], decay[hit])
        np.copyto(work, -np.inf, where=take)
        alive = work >= score_thresh
        live = alive[a] & alive[b]  # [E] edges between two boxes still alive
        a, b, total, decay = a[live], b[live], total[live], decay[live]
    picked = ~np.isnan(final)  # [M]
    keep = np.flatnonzero(picked)  # [K]
    kept_scores = final[keep]
    order = np.argsort(-kept_scores, kind="stable")  # best first, ties by index
    kept = torch.from_numpy(cand[keep[order]]).to(device)
    return kept, torch.from_numpy(kept_scores[order]).to(device, out_dtype)


def _nms(
    boxes: Tensor,
    scores: Tensor,
    groups: Tensor,
    nms_thresh: float,
    method: NMSMethod,
    soft_nms_sigma: float,
    score_thresh: float,
) -> tuple[Tensor, Tensor]:
    """Kept indices (best first) and their (possibly decayed) scores."""
    if method == "none":  # set prediction and heatmap peaks: no suppression, best first
        top = scores.topk(scores.shape[0])  # a sort ONNX exports (a stable argsort does not)
        return top.indices, top.values
    if method == "hard":
        keep = grouped_nms(boxes, scores, groups, nms_thresh)  # [K] by decreasing score
        return keep, scores[keep]
    return batched_soft_nms(
        boxes, scores, groups, method, sigma=soft_nms_sigma, iou_thresh=nms_thresh, score_thresh=score_thresh
    )


def _rank_in_image(image_idx: Tensor, num_images: int) -> Tensor:
    """Position of each detection among those of its image, in the given (best-first) order: Tensor[N]."""
    one_hot = (image_idx[:, None] == torch.arange(num_images, device=image_idx.device)).long()  # [N, B]
    return (one_hot.cumsum(0) * one_hot).sum(1) - 1  # [N]


def _clip(boxes: Tensor, image_idx: Tensor, image_sizes: Tensor) -> Tensor:
    """Clip xyxy ``boxes`` (Tensor[N, 4]) to the (h, w) of their image (``image_sizes`` Tensor[B, 2])."""
    hw = image_sizes.to(boxes.dtype)[image_idx]  # [N, 2]
    upper = torch.cat([hw.flip(-1), hw.flip(-1)], dim=-1)  # [N, 4] (w, h, w, h)
    return torch.minimum(boxes.clamp(min=0), upper)


def _sizes_tensor(image_sizes: Sequence[tuple[int, int]] | Tensor, num_images: int, device) -> Tensor:
    sizes = torch.as_tensor(image_sizes, device=device).reshape(-1, 2)  # [B, 2] (h, w)
    if sizes.shape[0] != num_images:
        raise ValueError(f"got {sizes.shape[0]} image sizes for a batch of {num_images}")
    return sizes


def _detect_flat(
    scores,
    boxes,
    level_sizes,
    image_sizes,
    score_thresh,
    nms_thresh,
    pre_nms_topk,
    max_detections_per_image,
    nms_method,
    soft_nms_sigma,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Shared pipeline: (image_idx, boxes, scores, labels, rank, location index) of the kept detections,
    best first."""
    check_nms_method(nms_method)
    num_images, _, num_classes = scores.shape
    sizes = _sizes_tensor(image_sizes, num_images, scores.device)
    image_idx, cand_boxes, cand_scores, labels, point_idx = select_candidates(
        scores, boxes, level_sizes, score_thresh, pre_nms_topk, return_points=True
    )
    cand_boxes = _clip(cand_boxes.float(), image_idx, sizes)  # [N, 4]
    groups = image_idx * num_classes + labels  # [N] one NMS group per (image, class)
    keep, kept_scores = _nms(
        cand_boxes, cand_scores.float(), groups, nms_thresh, nms_method, soft_nms_sigma, score_thresh
    )
    image_idx = image_idx[keep]
    rank = _rank_in_image(image_idx, num_images)  # [K]
    top = rank < max_detections_per_image
    return (
        image_idx[top],
        cand_boxes[keep][top],
        kept_scores[top],
        labels[keep][top],
        rank[top],
        point_idx[keep][top],
    )


def detect(
    scores: Tensor,
    boxes: Tensor,
    level_sizes: Sequence[int],
    image_sizes: Sequence[tuple[int, int]] | Tensor,
    score_thresh: float = 0.05,
    nms_thresh: float = 0.6,
    pre_nms_topk: int = 1000,
    max_detections_per_image: int = 100,
    nms_method: NMSMethod = "hard",
    soft_nms_sigma: float = 0.5,
    extras: dict[str, Tensor] | None = None,
) -> list[dict[str, Tensor]]:
    """Detections of a batch from dense per-location scores and boxes.

    Steps: per image and level keep the ``pre_nms_topk`` best (location, class) scores, drop those at or
    below ``score_thresh``, clip boxes to the image, NMS per image and class (:func:`~detforge.nms.grouped_nms`,
    or soft-NMS with ``nms_method="gaussian" | "linear"``), keep the ``max_detections_per_image`` best per image.

    Args:
        scores: Tensor[B, P, C] class probabilities.
        boxes: Tensor[B, P, 4] decoded xyxy boxes, pixels of the network input.
        level_sizes: locations per level (sum = P), for the per-level top-k.
        image_sizes: (h, w) of each unpadded image (list or Tensor[B, 2]); boxes are clipped to it.
        extras: more per-location outputs to return per detection, by name (Tensor[B, P, *] each, e.g. a box
            variance): gathered at each kept detection's location.

    Returns:
        one dict per image: ``boxes`` (Tensor[K, 4]), ``scores`` (Tensor[K]), ``labels`` (Tensor[K] int64),
        and each extra (Tensor[K, *]), best first.
    """
    num_images, num_points = scores.shape[:2]
    for name, value in (extras or {}).items():
        if tuple(value.shape[:2]) != (num_images, num_points):
            raise ValueError(
                f"extra {name!r} must be Tensor[B={num_images}, P={num_points}, *], got {tuple(value.shape)}"
            )
    image_idx, det_boxes, det_scores, labels, rank, point_idx = _detect_flat(
        scores,
        boxes,
        level_sizes,
        image_sizes,
        score_thresh,
        nms_thresh,
        pre_nms_topk,
        max_detections_per_image,
        nms_method,
        soft_nms_sigma,
    )
    order = (image_idx * (rank.max() + 1 if rank.numel() else 1) + rank).argsort()  # by image, then rank
    counts = torch.bincount(image_idx, minlength=num_images).tolist()
    fields = {"boxes": det_boxes, "scores": det_scores, "labels": labels}
    for name, value in (extras or {}).items():
        fields[name] = value[image_idx, point_idx]  # [K, *]
    split = {name: value[order].split(counts) for name, value in fields.items()}
    return [{name: parts[i] for name, parts in split.items()} for i in range(num_images)]


def detect_padded(
    scores: Tensor,
    boxes: Tensor,
    level_sizes: Sequence[int],
    image_sizes: Sequence[tuple[int, int]] | Tensor,
    score_thresh: float = 0.05,
    nms_thresh: float = 0.6,
    pre_nms_topk: int = 1000,
    max_detections_per_image: int = 100,
    nms_method: Literal["hard", "none"] = "hard",
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`detect` with fixed-size outputs (hard NMS or none), for ONNX graphs and batched consumers.

    Returns:
        boxes (Tensor[B, D, 4]), scores (Tensor[B, D]), labels (Tensor[B, D] int64) and the number of
        detections per image (Tensor[B] int64), D = ``max_detections_per_image``; rows past an image's count hold
        zero boxes, score 0 and label -1.
    """
    num_images = scores.shape[0]
    image_idx, det_boxes, det_scores, labels, rank, _ = _detect_flat(
        scores,
        boxes,
        level_sizes,
        image_sizes,
        score_thresh,
        nms_thresh,
        pre_nms_topk,
        max_detections_per_image,
        nms_method,
        0.5,
    )
    slot = image_idx * max_detections_per_image + rank  # [K] unique slot in the [B * D] outputs
    out_boxes = det_boxes.new_zeros(num_images * max_detections_per_image, 4).index_put((slot,), det_boxes)
    out_scores = det_scores.new_zeros(num_images * max_detections_per_image).index_put((slot,), det_scores)
    out_labels = labels.new_full((num_images * max_detections_per_image,), -1).index_put((slot,), labels)
    # A comparison table rather than index_add: ONNX scatters do not accumulate repeated indices.
    counts = (image_idx[:, None] == torch.arange(num_images, device=scores.device)).sum(0)  # [B]
    return (
        out_boxes.reshape(num_images, max_detections_per_image, 4),
        out_scores.reshape(num_images, max_detections_per_image),
        out_labels.reshape(num_images, max_detections_per_image),
        counts,
    )
