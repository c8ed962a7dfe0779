"""RetinaNet's anchor assignment (Lin et al. 2017), batched over images: every anchor takes the ground-truth
box it overlaps most; IoU >= ``fg_iou_thresh`` is foreground, < ``bg_iou_thresh`` background, in between
ignored, and each box's best anchors are foreground too (low-quality matches), as torchvision's ``RetinaNet``
with its ``Matcher(0.5, 0.4, allow_low_quality_matches=True)``.

One IoU matching over padded targets (:func:`detforge.assigners.rcnn.match_boxes`): no Python loop over
images.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from detforge.assigners.rcnn import BETWEEN, match_boxes

__all__ = ["AnchorTargets", "assign_anchors"]


class AnchorTargets(NamedTuple):
    """What :func:`assign_anchors` gives for a batch of B images and A anchors.

    Attributes:
        labels: Tensor[B, A] int64: the matched box's class for foreground anchors, -1 elsewhere.
        boxes: Tensor[B, A, 4] xyxy: the matched box of every foreground anchor (meaningless elsewhere).
        foreground: Tensor[B, A] bool.
        valid: Tensor[B, A] bool: foreground or background, False for the ignored anchors (the
            classification loss skips them).
    """

    labels: Tensor
    boxes: Tensor
    foreground: Tensor
    valid: Tensor


def assign_anchors(
    anchors: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    gt_mask: Tensor,
    fg_iou_thresh: float = 0.5,
    bg_iou_thresh: float = 0.4,
    allow_low_quality_matches: bool = True,
) -> AnchorTargets:
    """Assign every anchor of every image (see the module docstring).

    Args:
        anchors: Tensor[A, 4] xyxy, shared by the batch.
        gt_boxes: Tensor[B, G, 4] xyxy, padded; gt_labels: Tensor[B, G] int64; gt_mask: Tensor[B, G] bool, True
            for real boxes (:func:`detforge.targets.pad_targets`). An image without boxes is all background.
        fg_iou_thresh, bg_iou_thresh: the matching thresholds.
        allow_low_quality_matches: also make foreground each anchor that has some box's highest IoU (to the
            anchor's own best box). torchvision also does so for a box no anchor overlaps at all (best IoU 0:
            every anchor then "matches" it); here such a box gets no anchor.

    Returns:
        :class:`AnchorTargets`.
    """
    matched, _ = match_boxes(
        anchors[None], gt_boxes, gt_mask, fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches
    )  # [B, A]: gt index, BELOW_LOW (-1) or BETWEEN (-2)
    foreground = matched >= 0  # [B, A]
    index = matched.clamp(min=0)  # [B, A]
    labels = F.pad(gt_labels, (0, 1), value=-1).gather(1, index)  # [B, A]; the pad column serves G = 0
    labels = torch.where(foreground, labels, -1)
    padded_boxes = F.pad(gt_boxes, (0, 0, 0, 1))  # [B, G + 1, 4]
    boxes = padded_boxes.gather(1, index[..., None].expand(*index.shape, 4))  # [B, A, 4]
    return AnchorTargets(labels, boxes, foreground, matched != BETWEEN)
