"""SSD's matching and loss (torchvision's ``SSDMatcher`` and ``SSD.compute_loss``), batched over images.

Matching: every default box takes its best ground-truth box when their IoU is at least ``iou_thresh``, and
every ground-truth box takes its best default box whatever the IoU (a later box wins a shared one).
Loss: smooth L1 (beta 1) on the encoded deltas of the matched boxes, and softmax cross-entropy over the
matched boxes plus the hardest negatives, ``neg_to_pos_ratio`` per positive of the image, both summed and
divided by the positives of the batch (averaged over DDP ranks).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from detforge.assigners.rcnn import batched_box_iou
from detforge.boxes import AnchorBoxCoder
from detforge.models.criteria.common import loss_dict, positives_normaliser

__all__ = ["hard_negatives", "match_default_boxes", "ssd_loss"]


def match_default_boxes(anchors: Tensor, gt_boxes: Tensor, gt_mask: Tensor, iou_thresh: float) -> Tensor:
    """The ground-truth index of each default box (Tensor[B, A] int64, -1: background).

    Args:
        anchors: Tensor[A, 4] xyxy; gt_boxes: Tensor[B, G, 4] xyxy, padded; gt_mask: Tensor[B, G] bool.
    """
    num_images, num_anchors = gt_boxes.shape[0], anchors.shape[0]
    if gt_boxes.shape[1] == 0:
        return torch.full((num_images, num_anchors), -1, dtype=torch.int64, device=anchors.device)
    iou = batched_box_iou(anchors[None], gt_boxes).masked_fill(~gt_mask[:, None, :], -1.0)  # [B, A, G]
    best_iou, best_gt = iou.max(dim=2)  # [B, A] each: the first best box on ties
    matched = torch.where(best_iou >= iou_thresh, best_gt, -1)
    best_anchor = iou.argmax(dim=1)  # [B, G] the first best default box of each ground-truth box
    gt_index = torch.arange(gt_boxes.shape[1], device=anchors.device).expand_as(best_anchor)
    forced = torch.full_like(matched, -1).scatter_reduce(
        1, best_anchor, gt_index.masked_fill(~gt_mask, -1), reduce="amax"
    )  # [B, A] the last ground-truth box that has this default box as its best
    return torch.where(forced >= 0, forced, matched)


def hard_negatives(cls_loss: Tensor, positive: Tensor, neg_to_pos_ratio: float) -> Tensor:
    """torchvision's hard-negative selection (Tensor[B, A] bool): per image the ``ratio x positives`` boxes
    of highest loss (Tensor[B, A]) once the positives are set to -inf, ranked by ``sort(descending=True)``
    (its order on ties). An image with fewer negatives than that also selects positives, as torchvision does
    (it does not filter the -inf entries out)."""
    num_negative = neg_to_pos_ratio * positive.sum(1, keepdim=True)  # [B, 1]
    negative_loss = cls_loss.detach().masked_fill(positive, -float("inf"))
    order = negative_loss.sort(1, descending=True).indices  # [B, A]
    positions = torch.arange(order.shape[1], device=order.device).expand_as(order).contiguous()
    rank = torch.empty_like(order).scatter_(1, order, positions)  # [B, A] place of each box in the order
    return rank < num_negative


def ssd_loss(
    cls_logits: Tensor,
    deltas: Tensor,
    anchors: Tensor,
    matched: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    coder: AnchorBoxCoder,
    neg_to_pos_ratio: float = 3.0,
) -> dict[str, Tensor]:
    """``loss`` (their sum), ``bbox_regression``, ``classification`` and ``num_pos``.

    Args:
        cls_logits: Tensor[B, A, C + 1] (background first); deltas: Tensor[B, A, 4]; anchors: Tensor[A, 4];
        matched: Tensor[B, A] from :func:`match_default_boxes`; gt_boxes: Tensor[B, G, 4];
        gt_labels: Tensor[B, G] 0-indexed (class ``k`` is column ``k + 1``).
    """
    cls_logits, deltas = cls_logits.float(), deltas.float()
    positive = matched >= 0  # [B, A]
    image_idx, anchor_idx = positive.nonzero(as_tuple=True)  # [P] each
    gt_idx = matched[image_idx, anchor_idx]  # [P]
    targets = coder.encode(anchors[anchor_idx], gt_boxes[image_idx, gt_idx])  # [P, 4]
    box_sum = F.smooth_l1_loss(deltas[image_idx, anchor_idx], targets, beta=1.0, reduction="sum")
    labels = torch.zeros_like(matched).index_put((image_idx, anchor_idx), gt_labels[image_idx, gt_idx] + 1)
    num_images, num_anchors, num_columns = cls_logits.shape
    cls_loss = F.cross_entropy(
        cls_logits.reshape(-1, num_columns), labels.reshape(-1), reduction="none"
    ).reshape(num_images, num_anchors)  # [B, A]
    negative = hard_negatives(cls_loss, positive, neg_to_pos_ratio)
    normaliser = positives_normaliser(positive.sum())
    classification = (cls_loss[positive].sum() + cls_loss[negative].sum()) / normaliser
    parts = {"bbox_regression": (1.0, box_sum / normaliser), "classification": (1.0, classification)}
    return loss_dict(parts, positive.sum())
