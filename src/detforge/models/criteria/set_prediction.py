"""Set-prediction criterion (DETR, Carion et al. 2020, and its descendants): one-to-one Hungarian matching of
queries to ground truth (:class:`detforge.assigners.hungarian.HungarianMatcher`), then a classification loss on
every query and L1 + GIoU box losses on the matched ones, on every decoder layer (auxiliary losses).

Classification, pluggable (``class_loss``):

- ``softmax``: DETR's cross-entropy over C + 1 logits, the last one "no object", weighted 0.1 for the
  unmatched queries; a weighted mean over the queries (as ``F.cross_entropy(..., weight)``), its weight sum
  averaged over DDP ranks.
- ``focal``: sigmoid focal loss over C logits (Deformable DETR, DINO), summed and divided by the box count.
- ``varifocal``: varifocal loss over C logits (VarifocalNet; RT-DETR): the target at the matched class is the
  (detached) IoU of the predicted box with its ground truth; negatives are weighted ``alpha * p^gamma``.
- ``matchability``: DEIM's matchability-aware loss (Huang et al. 2025): the target at the matched class is
  ``IoU^gamma`` with weight 1 (varifocal weights it by the IoU, so the poorly placed matches of early training
  teach their class little), negatives weighted ``p^gamma``.

The L1 (on normalised cxcywh) and GIoU losses are summed over the matched queries and divided by the number
of boxes averaged over DDP ranks (:func:`positives_normaliser`), as are the sigmoid class losses.

Used by :class:`detforge.models.detr.DETR`.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_convert, generalized_box_iou_loss, sigmoid_focal_loss

from detforge.assigners.hungarian import HungarianMatcher
from detforge.boxes import xyxy_to_rel_cxcywh
from detforge.losses.iou import paired_box_iou
from detforge.models.criteria.common import check_labels, mean_over_ranks, positives_normaliser

__all__ = ["SetClassLoss", "SetCriterion", "SetMatch"]

SetClassLoss = Literal["softmax", "focal", "varifocal", "matchability"]
_CLASS_LOSSES = get_args(SetClassLoss)

# (batch_idx, query_idx, gt_idx), each Tensor[K] int64: query query_idx[k] of image batch_idx[k] learns padded
# ground truth gt_idx[k] of that image.
SetMatch = tuple[Tensor, Tensor, Tensor]


class SetCriterion(nn.Module):
    """DETR's losses of a whole batch and all decoder layers; loss hyper-parameters only (no parameters; the
    softmax no-object weight is a plain float).

    Args:
        class_loss: ``softmax`` (C + 1 logits, DETR), ``focal``, ``varifocal`` or ``matchability`` (C
            sigmoid logits).
        class_weight, l1_weight, giou_weight: weights of the parts (DETR: 1, 5, 2).
        no_object_weight: the softmax cross-entropy weight of the "no object" class (0.1).
        cost_class, cost_bbox, cost_giou: the matcher's cost weights (1, 5, 2); the matcher's class cost is
            softmax for ``softmax`` and focal for the sigmoid losses.
        focal_alpha, focal_gamma: focal loss (and focal matching cost) alpha and gamma (0.25, 2).
        varifocal_alpha, varifocal_gamma: varifocal negative weighting (0.75, 2).
        matchability_gamma: the matchability-aware loss's exponent of the IoU target and of the negative
            weight (DEIM: 1.5).
    """

    def __init__(
        self,
        class_loss: SetClassLoss = "softmax",
        class_weight: float = 1.0,
        l1_weight: float = 5.0,
        giou_weight: float = 2.0,
        no_object_weight: float = 0.1,
        cost_class: float = 1.0,
        cost_bbox: float = 5.0,
        cost_giou: float = 2.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        varifocal_alpha: float = 0.75,
        varifocal_gamma: float = 2.0,
        matchability_gamma: float = 1.5,
    ) -> None:
        super().__init__()
        if class_loss not in _CLASS_LOSSES:
            raise ValueError(f"class_loss must be one of {_CLASS_LOSSES}, got {class_loss!r}")
        weights = {
            "class_weight": class_weight,
            "l1_weight": l1_weight,
            "giou_weight": giou_weight,
            "no_object_weight": no_object_weight,
        }
        for key, value in weights.items():
            if value < 0:
                raise ValueError(f"{key} must be >= 0, got {value}")
        self.class_loss = class_loss
        self.class_weight = float(class_weight)
        self.l1_weight = float(l1_weight)
        self.giou_weight = float(giou_weight)
        self.no_object_weight = float(no_object_weight)
        self.focal_alpha, self.focal_gamma = float(focal_alpha), float(focal_gamma)
        self.varifocal_alpha, self.varifocal_gamma = float(varifocal_alpha), float(varifocal_gamma)
        self.matchability_gamma = float(matchability_gamma)
        self.matcher = HungarianMatcher(
            cost_class,
            cost_bbox,
            cost_giou,
            class_cost="softmax" if class_loss == "softmax" else "focal",
            focal_alpha=focal_alpha,
            focal_gamma=focal_gamma,
        )

    def extra_repr(self) -> str:
        return (
            f"class_loss={self.class_loss!r}, weights=({self.class_weight}, {self.l1_weight}, "
            f"{self.giou_weight}), no_object_weight={self.no_object_weight}"
        )

    def num_classes(self, class_logits: Tensor) -> int:
        """C, the number of real classes, from the logits' last dimension."""
        return class_logits.shape[-1] - (1 if self.class_loss == "softmax" else 0)

    def forward(
        self,
        class_logits: Tensor | list[Tensor],
        boxes: Tensor | list[Tensor],
        gt_boxes: Tensor,
        gt_labels: Tensor,
        gt_mask: Tensor,
        image_sizes: Tensor,
    ) -> dict[str, Tensor]:
        """Losses of a batch, summed over the decoder layers.

        Args:
            class_logits: Tensor[L, B, Q, K] (or L tensors [B, Q, K]), every decoder layer's class logits, the
                last layer last; K = C + 1 for ``softmax`` (last = no object), K = C otherwise.
            boxes: Tensor[L, B, Q, 4] (or a list), normalised (cx, cy, w, h) in [0, 1] of the real image.
            gt_boxes: Tensor[B, G, 4] xyxy pixels, gt_labels: Tensor[B, G] int64, gt_mask: Tensor[B, G] bool
                (:func:`detforge.targets.pad_targets`).
            image_sizes: Tensor[B, 2], (h, w) of each real (unpadded) image, the boxes' normaliser.

        Returns:
            ``loss`` (the weighted total over all layers), the last layer's detached unweighted
            ``class_loss``, ``l1_loss`` and ``giou_loss``, the detached weighted ``aux_loss`` of the other
            layers, and ``num_pos`` (this rank's boxes).
        """
        logits, pred = _stack(class_logits), _stack(boxes)  # [L, B, Q, K], [L, B, Q, 4]
        num_layers, num_images, num_queries, _ = logits.shape
        if pred.shape != (num_layers, num_images, num_queries, 4):
            raise ValueError(
                f"boxes must be [L, B, Q, 4] like {tuple(logits.shape[:3])}, got {tuple(pred.shape)}"
            )
        check_labels(gt_labels, gt_mask, self.num_classes(logits))
        tgt = xyxy_to_rel_cxcywh(gt_boxes.float(), image_sizes[:, None, :].float())  # [B, G, 4]
        # Every layer is matched on its own: the batch of L * B images shares the B images' targets.
        flat_logits, flat_pred = logits.flatten(0, 1), pred.flatten(0, 1)  # [L*B, Q, K], [L*B, Q, 4]
        flat_tgt = tgt.repeat(num_layers, 1, 1)  # [L*B, G, 4]
        flat_labels = gt_labels.repeat(num_layers, 1)  # [L*B, G]
        flat_mask = gt_mask.repeat(num_layers, 1)  # [L*B, G]
        match = self.matcher.match_padded(flat_logits, flat_pred, flat_tgt, flat_labels, flat_mask)

        num_objects = gt_mask.sum()
        normaliser = positives_normaliser(num_objects)
        parts = self.matched_losses(
            flat_logits, flat_pred, flat_tgt, flat_labels, match, normaliser, num_groups=num_layers
        )
        per_layer = {k: v.view(num_layers, num_images).sum(1) for k, v in parts.items()}  # [L] each
        weighted = (
            self.class_weight * per_layer["class_loss"]
            + self.l1_weight * per_layer["l1_loss"]
            + self.giou_weight * per_layer["giou_loss"]
        )  # [L]
        return {
            "loss": weighted.sum(),
            **{k: v[-1].detach() for k, v in per_layer.items()},
            "aux_loss": weighted[:-1].sum().detach(),
            "num_pos": num_objects.detach().float(),
        }

    def matched_losses(
        self,
        class_logits: Tensor,
        boxes: Tensor,
        tgt_boxes: Tensor,
        tgt_labels: Tensor,
        match: SetMatch,
        normaliser: Tensor,
        num_groups: int = 1,
    ) -> dict[str, Tensor]:
        """The unweighted parts per image, for a given matching (a denoising group passes its own).

        Args:
            class_logits: Tensor[N, Q, K]; boxes: Tensor[N, Q, 4] normalised cxcywh.
            tgt_boxes: Tensor[N, G, 4] normalised cxcywh; tgt_labels: Tensor[N, G] int64.
            match: ``(batch_idx, query_idx, gt_idx)``, Tensor[M] each (:meth:`HungarianMatcher.match_padded`).
            normaliser: Tensor[], the box count averaged over ranks (:func:`positives_normaliser`).
            num_groups: the N images are this many copies of the batch (e.g. decoder layers); the softmax
                cross-entropy is a weighted mean over one copy's queries.

        Returns:
            ``class_loss``, ``l1_loss``, ``giou_loss``: Tensor[N] each, image n's share of the batch's loss
            (their sums over the images are the batch's normalised losses).
        """
        num_images, num_queries, _ = class_logits.shape
        batch_idx, query_idx, gt_idx = match
        matched_boxes = boxes[batch_idx, query_idx].float()  # [M, 4]
        matched_tgt = tgt_boxes[batch_idx, gt_idx].float()  # [M, 4]
        matched_labels = tgt_labels[batch_idx, gt_idx]  # [M]
        pred_xyxy = box_convert(matched_boxes, "cxcywh", "xyxy")  # [M, 4]
        tgt_xyxy = box_convert(matched_tgt, "cxcywh", "xyxy")  # [M, 4]

        l1 = (matched_boxes - matched_tgt).abs().sum(-1)  # [M]
        giou = generalized_box_iou_loss(pred_xyxy, tgt_xyxy, reduction="none")  # [M]
        zeros = boxes.new_zeros(num_images, dtype=torch.float32)
        l1_loss = zeros.index_add(0, batch_idx, l1) / normaliser  # [N]
        giou_loss = zeros.index_add(0, batch_idx, giou) / normaliser  # [N]

        logits = class_logits.float()  # [N, Q, K]
        if self.class_loss == "softmax":
            no_object = logits.shape[-1] - 1
            target = torch.full((num_images, num_queries), no_object, dtype=torch.int64, device=logits.device)
            target[batch_idx, query_idx] = matched_labels  # [N, Q]
            weight = torch.ones(no_object + 1, device=logits.device)
            weight[no_object] = self.no_object_weight
            ce = F.cross_entropy(logits.transpose(1, 2), target, reduction="none")  # [N, Q]
            query_weight = weight[target]  # [N, Q]
            # F.cross_entropy(..., weight)'s weighted mean, its weight sum averaged over the ranks.
            weight_sum = mean_over_ranks(query_weight.sum() / num_groups).clamp(min=1e-6)
            class_loss = (ce * query_weight).sum(1) / weight_sum  # [N]
        else:
            target = torch.zeros_like(logits)  # [N, Q, C]
            if self.class_loss == "focal":
                target[batch_idx, query_idx, matched_labels] = 1.0
                loss = sigmoid_focal_loss(
                    logits, target, self.focal_alpha, self.focal_gamma, reduction="none"
                )
            else:
                iou = paired_box_iou(pred_xyxy.detach(), tgt_xyxy).clamp(min=0)  # [M]
                prob = logits.sigmoid().detach()
                positive = torch.zeros_like(logits, dtype=torch.bool)
                positive[batch_idx, query_idx, matched_labels] = True
                if self.class_loss == "varifocal":
                    target[batch_idx, query_idx, matched_labels] = iou.to(target.dtype)
                    weight = torch.where(
                        positive, target, self.varifocal_alpha * prob.pow(self.varifocal_gamma)
                    )
                else:  # matchability: IoU^gamma targets at full weight
                    gamma = self.matchability_gamma
                    target[batch_idx, query_idx, matched_labels] = iou.pow(gamma).to(target.dtype)
                    weight = torch.where(positive, torch.ones_like(prob), prob.pow(gamma))
                loss = F.binary_cross_entropy_with_logits(logits, target, weight=weight, reduction="none")
            class_loss = loss.flatten(1).sum(1) / normaliser  # [N]
        return {"class_loss": class_loss, "l1_loss": l1_loss, "giou_loss": giou_loss}


def _stack(values: Tensor | list[Tensor]) -> Tensor:
    """Tensor[L, B, Q, K] from a tensor of that shape or a list of L tensors [B, Q, K]."""
    out = torch.stack(list(values)) if isinstance(values, list | tuple) else values
    if out.ndim != 4:
        raise ValueError(f"expected Tensor[L, B, Q, K] or L tensors [B, Q, K], got {tuple(out.shape)}")
    return out
