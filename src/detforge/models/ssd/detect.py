"""SSD's detections (torchvision's ``SSD.postprocess_detections``), batched over images: per image and class
the ``pre_nms_topk`` best default boxes scoring above the threshold, NMS per image and class, the best
``max_detections_per_image`` of each image.

The top-k is per class over all levels (torchvision's ``topk_candidates``), not per level over (location,
class) pairs as :func:`detforge.postprocess.detect` does; the rest is the shared pipeline.
"""

from __future__ import annotations

import torch
from torch import Tensor

from detforge.models.base import PostprocessSettings
from detforge.models.faster_rcnn.rpn import rank_in_image
from detforge.postprocess import _nms

__all__ = ["detections_per_class"]


def detections_per_class(
    scores: Tensor, boxes: Tensor, image_sizes: Tensor, settings: PostprocessSettings
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(image index, boxes, scores, labels, rank in image) of the kept detections of the batch, best first.

    Args:
        scores: Tensor[B, A, C] class probabilities (no background column).
        boxes: Tensor[B, A, 4] decoded xyxy boxes.
        image_sizes: Tensor[B, 2] (h, w) each image's boxes are clipped to.
    """
    num_images, num_anchors, num_classes = scores.shape
    k = min(settings.pre_nms_topk, num_anchors)
    top_scores, top_idx = scores.transpose(1, 2).topk(k, dim=2)  # [B, C, k] each
    image_idx, labels, slot = (top_scores > settings.score_thresh).nonzero(as_tuple=True)  # [N] each
    anchor_idx = top_idx[image_idx, labels, slot]  # [N]
    cand_scores = top_scores[image_idx, labels, slot]  # [N]
    hw = image_sizes.to(boxes.dtype)[image_idx]  # [N, 2]
    upper = torch.cat([hw.flip(-1), hw.flip(-1)], dim=-1)  # [N, 4] (w, h, w, h)
    cand_boxes = torch.minimum(boxes[image_idx, anchor_idx].clamp(min=0), upper)  # [N, 4]
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
    rank = rank_in_image(image_idx, num_images)  # [K]
    top = rank < settings.max_detections_per_image
    return image_idx[top], cand_boxes[keep][top], kept_scores[top], labels[keep][top], rank[top]
