"""Faster R-CNN's detections from the RoI head's outputs (torchvision's ``postprocess_detections``,
batched): softmax scores, class-specific boxes, per-image top-k, NMS per image and class, top detections."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from detforge.boxes import AnchorBoxCoder
from detforge.models.base import PostprocessSettings
from detforge.models.faster_rcnn.rpn import clip_to_sizes, rank_in_image
from detforge.postprocess import _nms

__all__ = ["detections_flat", "to_padded", "to_per_image"]


def detections_flat(
    outputs: dict[str, Any],
    image_sizes: Tensor,
    coder: AnchorBoxCoder,
    settings: PostprocessSettings,
    min_size: float = 1e-2,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(image index, boxes, scores, labels, rank in image) of the kept detections of the batch, best first.

    ``outputs``: ``proposals`` (Tensor[B, R, 4]), ``proposal_mask`` (Tensor[B, R] bool), ``class_logits``
    (Tensor[B, R, C + 1], background first) and ``box_deltas`` (Tensor[B, R, C + 1, 4]); ``image_sizes``:
    Tensor[B, 2] (h, w). Labels are 0-indexed (the background column is dropped).
    """
    logits, deltas = outputs["class_logits"].float(), outputs["box_deltas"].float()
    num_images, num_rois, num_cls = logits.shape
    num_classes = num_cls - 1
    scores = logits.softmax(-1)[..., 1:]  # [B, R, C]
    boxes = coder.decode(outputs["proposals"].float()[:, :, None, :], deltas[:, :, 1:])  # [B, R, C, 4]
    boxes = clip_to_sizes(boxes, image_sizes)
    wh = boxes[..., 2:] - boxes[..., :2]
    ok = outputs["proposal_mask"][..., None] & (wh >= min_size).all(-1)  # [B, R, C]
    scores = torch.where(ok, scores, torch.full_like(scores, -1.0)).reshape(num_images, -1)  # [B, R * C]
    k = min(settings.pre_nms_topk, num_rois * num_classes)
    top_scores, top_idx = scores.topk(k, dim=1)  # [B, k]
    image_idx, k_idx = (top_scores > settings.score_thresh).nonzero(as_tuple=True)  # [N]
    flat = top_idx[image_idx, k_idx]  # [N] index into R * C
    labels = flat % num_classes
    cand_boxes = boxes.reshape(num_images, -1, 4)[image_idx, flat]  # [N, 4]
    cand_scores = top_scores[image_idx, k_idx]
    keep, kept_scores = _nms(
        cand_boxes,
        cand_scores,
        image_idx * num_classes + labels,
        settings.nms_thresh,
        settings.nms_method,
        settings.soft_nms_sigma,
        settings.score_thresh,
    )
    image_idx = image_idx[keep]
    rank = rank_in_image(image_idx, num_images)
    top = rank < settings.max_detections_per_image
    return image_idx[top], cand_boxes[keep][top], kept_scores[top], labels[keep][top], rank[top]


def to_per_image(found: tuple[Tensor, ...], num_images: int) -> list[dict[str, Tensor]]:
    """One dict per image (``boxes``, ``scores``, ``labels``, best first) from :func:`detections_flat`."""
    image_idx, boxes, scores, labels, rank = found
    order = (image_idx * (rank.max() + 1 if rank.numel() else 1) + rank).argsort()
    counts = torch.bincount(image_idx, minlength=num_images).tolist()
    parts = {k: v[order].split(counts) for k, v in (("boxes", boxes), ("scores", scores), ("labels", labels))}
    return [{k: v[i] for k, v in parts.items()} for i in range(num_images)]


def to_padded(found: tuple[Tensor, ...], num_images: int, max_det: int) -> dict[str, Tensor]:
    """Fixed-size detections for ONNX: ``boxes`` [B, D, 4], ``scores`` [B, D], ``labels`` [B, D] (-1 past
    the count) and ``num_detections`` [B]."""
    image_idx, boxes, scores, labels, rank = found
    slot = image_idx * max_det + rank
    out_boxes = boxes.new_zeros(num_images * max_det, 4).index_put((slot,), boxes)
    out_scores = scores.new_zeros(num_images * max_det).index_put((slot,), scores)
    out_labels = labels.new_full((num_images * max_det,), -1).index_put((slot,), labels)
    counts = (image_idx[:, None] == torch.arange(num_images, device=boxes.device)).sum(0)  # [B]
    return {
        "boxes": out_boxes.reshape(num_images, max_det, 4),
        "scores": out_scores.reshape(num_images, max_det),
        "labels": out_labels.reshape(num_images, max_det),
        "num_detections": counts,
    }
