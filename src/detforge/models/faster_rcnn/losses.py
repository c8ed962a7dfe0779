"""Faster R-CNN's losses (torchvision's ``RegionProposalNetwork.compute_loss`` and ``fastrcnn_loss``),
batched and normalised by the sampled count averaged over DDP ranks (:func:`positives_normaliser`)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from detforge.boxes import AnchorBoxCoder
from detforge.models.criteria.common import positives_normaliser

__all__ = ["rpn_loss", "roi_loss"]

SMOOTH_L1_BETA = 1.0 / 9


def rpn_loss(
    objectness: Tensor,
    deltas: Tensor,
    anchors: Tensor,
    positive: Tensor,
    negative: Tensor,
    matched_boxes: Tensor,
    coder: AnchorBoxCoder,
) -> tuple[Tensor, Tensor]:
    """Objectness (binary cross-entropy) and box (smooth L1, beta 1/9) losses of the sampled anchors, both
    divided by the number sampled.

    Args:
        objectness: Tensor[B, A] logits; deltas: Tensor[B, A, 4]; anchors: Tensor[A, 4];
        positive, negative: sampled masks (Tensor[B, A] bool); matched_boxes: Tensor[B, A, 4] each anchor's
            matched ground-truth box (used where ``positive``).
    """
    sampled = positive | negative
    normaliser = positives_normaliser(sampled.sum())
    loss_objectness = (
        F.binary_cross_entropy_with_logits(
            objectness[sampled], positive[sampled].to(objectness.dtype), reduction="sum"
        )
        / normaliser
    )
    image_idx, anchor_idx = positive.nonzero(as_tuple=True)
    targets = coder.encode(anchors[anchor_idx], matched_boxes[image_idx, anchor_idx])  # [P, 4]
    loss_box = (
        F.smooth_l1_loss(deltas[image_idx, anchor_idx], targets, beta=SMOOTH_L1_BETA, reduction="sum")
        / normaliser
    )
    return loss_objectness, loss_box


def roi_loss(
    class_logits: Tensor,
    box_deltas: Tensor,
    labels: Tensor,
    rois: Tensor,
    matched_boxes: Tensor,
    coder: AnchorBoxCoder,
) -> tuple[Tensor, Tensor]:
    """Classification (cross-entropy over background + classes) and class-specific box (smooth L1, beta
    1/9, positives only) losses of the sampled RoIs, both divided by the number sampled.

    Args:
        class_logits: Tensor[K, C + 1]; box_deltas: Tensor[K, C + 1, 4]; labels: Tensor[K] (0 background,
            1..C classes); rois: Tensor[K, 4]; matched_boxes: Tensor[K, 4] (used where ``labels > 0``).
    """
    normaliser = positives_normaliser(labels.new_tensor(labels.numel()))
    loss_classifier = F.cross_entropy(class_logits, labels, reduction="sum") / normaliser
    pos = (labels > 0).nonzero(as_tuple=True)[0]  # [P]
    targets = coder.encode(rois[pos], matched_boxes[pos])  # [P, 4]
    loss_box = (
        F.smooth_l1_loss(box_deltas[pos, labels[pos]], targets, beta=SMOOTH_L1_BETA, reduction="sum")
        / normaliser
    )
    return loss_classifier, loss_box
