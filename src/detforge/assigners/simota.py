"""SimOTA, YOLOX's dynamic-k label assignment, for a whole padded batch at once.

For each image (all images at once, padded):

1. Candidates: anchors whose point lies strictly inside some GT box or strictly inside the square of half-side
   ``center_radius * stride`` around some GT centre (the centre prior of the original YOLOX).
2. Cost of each (GT, candidate) pair: ``cls_weight * BCE(sqrt(score), one_hot(gt label)) summed over classes
   + iou_weight * -log(IoU + 1e-8) + 1e5`` when the anchor is not both inside that box and inside its centre
   region. ``score`` is the predicted class probability times the objectness probability.
3. Dynamic k: each GT takes ``k = max(1, int(sum of its candidate_topk largest IoUs))`` candidates of lowest
   cost.
4. An anchor taken by several GTs keeps the GT of lowest cost (over all GTs of the image, as YOLOX does).

Costs are compared in float64 so the 1e5 penalty does not erase the differences between penalised pairs.
Ties of exactly equal cost are broken by ``torch.topk`` / ``torch.argmin`` order.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["SimOTAAssigner", "SimOTAAssignment", "batched_box_iou"]

_OUTSIDE_PENALTY = 1e5


class SimOTAAssignment(NamedTuple):
    """SimOTA result per anchor; A = anchors (grid locations of all levels)."""

    labels: Tensor  # [B, A] int64, -1 = background
    matched_gt: Tensor  # [B, A] int64 index into the G axis of gt_boxes, -1 = background
    matched_iou: Tensor  # [B, A] float32 IoU of the prediction with its GT (YOLOX's soft cls target), 0 = bg
    fg_mask: Tensor  # [B, A] bool


def batched_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of every pair, per image: boxes1 (Tensor[B, N, 4] xyxy), boxes2 (Tensor[B, M, 4]) -> Tensor[B, N, M]."""
    area1 = (boxes1[..., 2] - boxes1[..., 0]) * (boxes1[..., 3] - boxes1[..., 1])  # [B, N]
    area2 = (boxes2[..., 2] - boxes2[..., 0]) * (boxes2[..., 3] - boxes2[..., 1])  # [B, M]
    top_left = torch.maximum(boxes1[:, :, None, :2], boxes2[:, None, :, :2])  # [B, N, M, 2]
    bottom_right = torch.minimum(boxes1[:, :, None, 2:], boxes2[:, None, :, 2:])  # [B, N, M, 2]
    wh = (bottom_right - top_left).clamp(min=0)  # [B, N, M, 2]
    inter = wh[..., 0] * wh[..., 1]  # [B, N, M]
    return inter / (area1[:, :, None] + area2[:, None, :] - inter)


class SimOTAAssigner:
    """YOLOX's SimOTA assigner (no parameters, no grad, whole batch at once).

    Args:
        center_radius: half-side of the centre prior around each GT centre, in strides.
        candidate_topk: how many of the largest IoUs set each GT's dynamic k.
        iou_weight: weight of the ``-log(IoU)`` cost.
        cls_weight: weight of the classification cost.

    Call :meth:`assign` (or the instance itself); see the module docstring for the rules.
    """

    def __init__(
        self,
        center_radius: float = 2.5,
        candidate_topk: int = 10,
        iou_weight: float = 3.0,
        cls_weight: float = 1.0,
    ) -> None:
        if not center_radius > 0:
            raise ValueError(f"center_radius must be > 0, got {center_radius}")
        if int(candidate_topk) < 1:
            raise ValueError(f"candidate_topk must be >= 1, got {candidate_topk}")
        if iou_weight < 0 or cls_weight < 0:
            raise ValueError(f"iou_weight and cls_weight must be >= 0, got {iou_weight} and {cls_weight}")
        self.center_radius = float(center_radius)
        self.candidate_topk = int(candidate_topk)
        self.iou_weight = float(iou_weight)
        self.cls_weight = float(cls_weight)

    def __repr__(self) -> str:
        return (
            f"SimOTAAssigner(center_radius={self.center_radius}, candidate_topk={self.candidate_topk}, "
            f"iou_weight={self.iou_weight}, cls_weight={self.cls_weight})"
        )

    def __call__(self, *args, **kwargs) -> SimOTAAssignment:
        return self.assign(*args, **kwargs)

    @torch.no_grad()
    def assign(
        self,
        pred_scores: Tensor,
        pred_boxes: Tensor,
        points: Tensor,
        strides: Tensor,
        gt_boxes: Tensor,
        gt_labels: Tensor,
        gt_mask: Tensor,
    ) -> SimOTAAssignment:
        """Assign GTs to anchors.

        Args:
            pred_scores: Tensor[B, A, C], sigmoid(cls) * sigmoid(obj) probabilities (detached).
            pred_boxes: Tensor[B, A, 4], decoded predictions, xyxy pixels.
            points: Tensor[A, 2], (x, y) pixel centre of each anchor's grid cell.
            strides: Tensor[A], stride of each anchor's level.
            gt_boxes: Tensor[B, G, 4], xyxy pixels, padded.
            gt_labels: Tensor[B, G] int64 in [0, C).
            gt_mask: Tensor[B, G] bool, False for padding.
        """
        num_images, num_anchors, num_classes = pred_scores.shape
        num_gt = gt_boxes.shape[1]
        self._check_shapes(pred_scores, pred_boxes, points, strides, gt_boxes, gt_labels, gt_mask)
        device = pred_scores.device
        gt_boxes, gt_mask = gt_boxes.float(), gt_mask.bool()
        labels = torch.full((num_images, num_anchors), -1, dtype=torch.int64, device=device)  # [B, A]
        matched_gt = torch.full_like(labels, -1)  # [B, A]
        matched_iou = torch.zeros(num_images, num_anchors, device=device)  # [B, A]
        if num_gt == 0 or num_anchors == 0:
            return SimOTAAssignment(labels, matched_gt, matched_iou, labels >= 0)
        bad_label = gt_mask & ((gt_labels < 0) | (gt_labels >= num_classes))  # [B, G]
        if bool(bad_label.any()):
            b, g = (int(v) for v in bad_label.nonzero()[0])
            raise ValueError(
                f"SimOTAAssigner: gt_labels[{b}, {g}] = {int(gt_labels[b, g])} not in [0, {num_classes})"
            )

        # Centre prior, [B, G, A] each; ``a > b`` is the same test as ``a - b > 0`` for finite floats.
        px, py = points[:, 0].float(), points[:, 1].float()  # [A]
        x1, y1, x2, y2 = (gt_boxes[..., i, None] for i in range(4))  # [B, G, 1] each
        in_box = (px > x1) & (py > y1) & (px < x2) & (py < y2)  # [B, G, A]
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2  # [B, G, 1]
        radius = self.center_radius * strides.float()  # [A]
        in_center = (px > cx - radius) & (py > cy - radius) & (px < cx + radius) & (py < cy + radius)
        in_box &= gt_mask[..., None]
        in_center &= gt_mask[..., None]
        is_candidate = (in_box | in_center).any(1)  # [B, A]

        # Gather each image's candidates to the front: [B, Ac], ascending anchor index, padded.
        num_candidates = is_candidate.sum(1)  # [B]
        max_candidates = int(num_candidates.max())
        if max_candidates == 0:
            return SimOTAAssignment(labels, matched_gt, matched_iou, labels >= 0)
        cand = torch.argsort((~is_candidate).to(torch.uint8), dim=1, stable=True)[
            :, :max_candidates
        ]  # [B, Ac]
        cand_valid = torch.arange(max_candidates, device=device) < num_candidates[:, None]  # [B, Ac]
        pair_valid = gt_mask[:, :, None] & cand_valid[:, None, :]  # [B, G, Ac]
        cand_for_gt = cand[:, None, :].expand(num_images, num_gt, max_candidates)  # [B, G, Ac]
        in_both = (in_box & in_center).gather(2, cand_for_gt)  # [B, G, Ac]
        cand_boxes = pred_boxes.float().gather(1, cand[..., None].expand(-1, -1, 4))  # [B, Ac, 4]
        cand_scores = pred_scores.float().gather(1, cand[..., None].expand(-1, -1, num_classes))  # [B, Ac, C]

        ious = batched_box_iou(gt_boxes, cand_boxes)  # [B, G, Ac]
        ious = torch.where(pair_valid, ious, torch.zeros((), device=device))
        cost = self.cls_weight * self._cls_cost(cand_scores, gt_labels) + self.iou_weight * -torch.log(
            ious + 1e-8
        )
        cost = cost.double() + _OUTSIDE_PENALTY * (~in_both).double()  # [B, G, Ac]
        cost = torch.where(pair_valid, cost, torch.full((), torch.inf, dtype=cost.dtype, device=device))

        # Dynamic k per GT, then each GT's k cheapest candidates.
        topk = min(self.candidate_topk, max_candidates)
        dynamic_k = ious.topk(topk, dim=2).values.sum(-1).int().clamp(min=1)  # [B, G]
        cheapest = cost.topk(topk, dim=2, largest=False).indices  # [B, G, topk]
        take = torch.arange(topk, device=device) < dynamic_k[..., None]  # [B, G, topk]
        matching = torch.zeros_like(pair_valid).scatter_(2, cheapest, take) & pair_valid  # [B, G, Ac]

        # One GT per anchor: the lowest-cost GT where several took it.
        times_taken = matching.sum(1)  # [B, Ac]
        gt_of = torch.where(times_taken > 1, cost.argmin(1), matching.to(torch.uint8).argmax(1))  # [B, Ac]
        fg = times_taken > 0  # [B, Ac]

        image_of, slot = fg.nonzero(as_tuple=True)  # [M] each
        anchor = cand[image_of, slot]  # [M]
        gt = gt_of[image_of, slot]  # [M]
        labels[image_of, anchor] = gt_labels[image_of, gt].long()
        matched_gt[image_of, anchor] = gt
        matched_iou[image_of, anchor] = ious[image_of, gt, slot]
        return SimOTAAssignment(labels, matched_gt, matched_iou, labels >= 0)

    @staticmethod
    def _cls_cost(scores: Tensor, gt_labels: Tensor) -> Tensor:
        """Summed BCE of sqrt(scores) (Tensor[B, Ac, C]) against each GT's one-hot label -> Tensor[B, G, Ac].

        Same value as ``F.binary_cross_entropy(p, one_hot).sum(-1)`` (logs clamped at -100) without building
        the [B, G, Ac, C] tensor: the all-negative sum plus a correction at the GT's class.
        """
        prob = scores.sqrt()  # [B, Ac, C]
        log_p = prob.log().clamp(min=-100)  # [B, Ac, C]
        log_not_p = (1 - prob).log().clamp(min=-100)  # [B, Ac, C]
        all_negative = -log_not_p.sum(-1)  # [B, Ac]
        cls_idx = gt_labels.clamp(min=0)[:, None, :].expand(-1, scores.shape[1], -1)  # [B, Ac, G]
        at_label = (log_not_p.gather(2, cls_idx) - log_p.gather(2, cls_idx)).transpose(1, 2)  # [B, G, Ac]
        return all_negative[:, None, :] + at_label

    @staticmethod
    def _check_shapes(pred_scores, pred_boxes, points, strides, gt_boxes, gt_labels, gt_mask) -> None:
        b, a, _ = pred_scores.shape
        g = gt_boxes.shape[1] if gt_boxes.dim() == 3 else -1
        expected = {
            "pred_boxes": (pred_boxes, (b, a, 4)),
            "points": (points, (a, 2)),
            "strides": (strides, (a,)),
            "gt_boxes": (gt_boxes, (b, g, 4)),
            "gt_labels": (gt_labels, (b, g)),
            "gt_mask": (gt_mask, (b, g)),
        }
        for name, (tensor, shape) in expected.items():
            if tuple(tensor.shape) != shape:
                raise ValueError(f"SimOTAAssigner: {name} must have shape {shape}, got {tuple(tensor.shape)}")
        bad = gt_mask.bool() & ~torch.isfinite(gt_boxes).all(-1)  # [B, G]
        if bool(bad.any()):
            bi, gi = (int(v) for v in bad.nonzero()[0])
            raise ValueError(
                f"SimOTAAssigner: gt_boxes[{bi}, {gi}] = {gt_boxes[bi, gi].tolist()} is not finite"
            )
