"""Faster R-CNN's assignment, batched over images: IoU matching (torchvision's ``Matcher``) with the
candidates x ground-truth IoU computed in chunks, and the balanced positive / negative sampler
(torchvision's ``BalancedPositiveNegativeSampler``) with an optional hard-negative priority (OHEM).

Both work on padded tensors (``detforge.targets.pad_targets``): no Python loop over images.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["BELOW_LOW", "BETWEEN", "batched_box_iou", "hash_priority", "match_boxes", "sample_balanced"]

BELOW_LOW = -1
"""``match_boxes`` index of a candidate whose best IoU is below the low threshold (background)."""
BETWEEN = -2
"""``match_boxes`` index of a candidate between the thresholds (ignored)."""

_CHUNK_ELEMENTS = 1 << 20  # IoU entries per chunk: 4 MB of float32


def batched_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of every pair: ``boxes1`` (Tensor[B, N, 4] or [1, N, 4]) x ``boxes2`` (Tensor[B, G, 4]) ->
    Tensor[B, N, G] (torchvision's ``box_iou`` arithmetic, batched)."""
    area1 = (boxes1[..., 2] - boxes1[..., 0]) * (boxes1[..., 3] - boxes1[..., 1])  # [B, N]
    area2 = (boxes2[..., 2] - boxes2[..., 0]) * (boxes2[..., 3] - boxes2[..., 1])  # [B, G]
    a, b = boxes1[:, :, None, :], boxes2[:, None, :, :]  # [B, N, 1, 4], [B, 1, G, 4]
    # per coordinate, so no [B, N, G, 2] intermediates: the same arithmetic as box_iou
    iw = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])).clamp_(
        min=0
    )  # [B, N, G]
    ih = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])).clamp_(min=0)
    inter = iw.mul_(ih)
    union = (area1[:, :, None] + area2[:, None, :]).sub_(inter)
    return inter / union


def match_boxes(
    candidates: Tensor,
    gt_boxes: Tensor,
    gt_mask: Tensor,
    high_threshold: float,
    low_threshold: float,
    allow_low_quality_matches: bool = False,
    chunk_elements: int = _CHUNK_ELEMENTS,
) -> tuple[Tensor, Tensor]:
    """Match every candidate box to its best ground-truth box, as torchvision's ``Matcher``.

    Args:
        candidates: Tensor[B, N, 4] (or [1, N, 4], shared by the batch: anchors) xyxy boxes.
        gt_boxes: Tensor[B, G, 4] xyxy, padded; gt_mask: Tensor[B, G] bool, True for real boxes.
        high_threshold, low_threshold: IoU >= high is a match; < low is background (:data:`BELOW_LOW`);
            between is ignored (:data:`BETWEEN`).
        allow_low_quality_matches: also match each candidate that has the highest IoU of some ground-truth
            box (to the candidate's own best box), so every box gets at least one match.
        chunk_elements: IoU entries computed at once; candidates are processed in chunks of
            ``chunk_elements // (B * G)`` so 2,000 boxes x 100k anchors never need gigabytes.

    Returns:
        matched index (Tensor[B, N] int64: a gt index, :data:`BELOW_LOW` or :data:`BETWEEN`) and the best IoU
        (Tensor[B, N]).
    """
    num_images = gt_boxes.shape[0]
    n, g = candidates.shape[1], gt_boxes.shape[1]
    if g == 0:
        shape = (num_images, n)
        return (
            torch.full(shape, BELOW_LOW, dtype=torch.int64, device=candidates.device),
            candidates.new_zeros(shape),
        )
    chunk = max(1, chunk_elements // max(1, num_images * g))
    invalid = ~gt_mask[:, None, :]  # [B, 1, G]
    best_iou, best_idx, gt_best = [], [], None
    for start in range(0, n, chunk):
        iou = batched_box_iou(candidates[:, start : start + chunk], gt_boxes).masked_fill(invalid, -1.0)
        value, index = iou.max(dim=2)  # [B, c] each
        best_iou.append(value)
        best_idx.append(index)
        chunk_best = iou.max(dim=1).values  # [B, G]
        gt_best = chunk_best if gt_best is None else torch.maximum(gt_best, chunk_best)
    iou_max, matches = torch.cat(best_iou, 1), torch.cat(best_idx, 1)  # [B, N] each
    result = torch.where(iou_max < low_threshold, BELOW_LOW, matches)
    result = torch.where((iou_max >= low_threshold) & (iou_max < high_threshold), BETWEEN, result)
    if allow_low_quality_matches:
        # second pass: candidates holding some box's highest IoU (boxes no candidate overlaps are skipped)
        target = gt_best.masked_fill(~gt_mask | (gt_best <= 0), 2.0)[:, None, :]  # [B, 1, G]
        low_quality = []
        for start in range(0, n, chunk):
            iou = batched_box_iou(candidates[:, start : start + chunk], gt_boxes)
            low_quality.append((iou == target).any(dim=2))  # [B, c]
        result = torch.where(torch.cat(low_quality, 1), matches, result)
    return result, iou_max.clamp(min=0)


def hash_priority(shape: tuple[int, int], device: torch.device | str | None = None) -> Tensor:
    """A fixed pseudo-random priority per column (Tensor[B, N] float): the same for every image and call,
    so evaluation-mode sampling is deterministic and does not depend on the batch an image is in."""
    index = torch.arange(shape[1], device=device, dtype=torch.int64)
    mixed = (index * 2654435761 + 12345) % 4294967296  # Knuth's multiplicative hash
    return (mixed.float() / 4294967296.0)[None].expand(shape)


def _top_ranked(mask: Tensor, priority: Tensor, count: Tensor) -> Tensor:
    """Per row, the ``count`` (Tensor[B]) entries of ``mask`` (Tensor[B, N] bool) with the highest
    ``priority`` (Tensor[B, N]): Tensor[B, N] bool."""
    key = torch.where(mask, priority, torch.full_like(priority, -float("inf")))
    order = key.argsort(dim=1, descending=True, stable=True)  # [B, N]
    rank = torch.empty_like(order).scatter_(
        1, order, torch.arange(order.shape[1], device=order.device).expand_as(order).contiguous()
    )  # [B, N] position of each entry in the order
    return mask & (rank < count[:, None])


def sample_balanced(
    labels: Tensor,
    batch_size_per_image: int,
    positive_fraction: float,
    priority: Tensor | None = None,
    negative_priority: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Balanced sampling of every image at once (torchvision's ``BalancedPositiveNegativeSampler``).

    Per image: ``min(int(batch_size_per_image * positive_fraction), #positives)`` positives, then negatives
    up to ``batch_size_per_image`` in all.

    Args:
        labels: Tensor[B, N]: > 0 positive, 0 negative, < 0 ignored.
        priority: Tensor[B, N]; the highest-priority candidates are kept (None: uniform random, as torchvision).
        negative_priority: Tensor[B, N] used for the negatives instead (hard-negative mining: their loss).

    Returns:
        positive and negative masks (Tensor[B, N] bool each).
    """
    positive, negative = labels > 0, labels == 0
    if priority is None:
        priority = torch.rand(labels.shape, device=labels.device)
    num_pos = positive.sum(1).clamp(max=int(batch_size_per_image * positive_fraction))  # [B]
    num_neg = torch.minimum(negative.sum(1), batch_size_per_image - num_pos)  # [B]
    pos = _top_ranked(positive, priority, num_pos)
    neg = _top_ranked(negative, priority if negative_priority is None else negative_priority, num_neg)
    return pos, neg
