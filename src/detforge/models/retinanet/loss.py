"""RetinaNet's losses (Lin et al. 2017), batched over images, equal to torchvision's ``RetinaNet``'s:

- ``classification``: sigmoid focal loss summed over every class of every anchor that is not ignored;
- ``bbox_regression``: over the foreground anchors, L1 on the deltas (torchvision's v1), smooth L1 (the
  paper, detectron's) or GIoU on the decoded boxes (torchvision's v2);

each divided by the image's foreground count (at least 1), then averaged over the batch's images. That per-image
normalisation is torchvision's; the mean over images keeps DDP exact too (the gradient averaged over ranks of
equal batch sizes is the gradient of the whole batch).
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from detforge.assigners.retinanet import AnchorTargets, assign_anchors
from detforge.boxes import AnchorBoxCoder
from detforge.losses.focal import labels_to_one_hot
from detforge.models.criteria.common import check_labels

__all__ = ["RetinaNetBoxLoss", "RetinaNetLoss"]

RetinaNetBoxLoss = Literal["l1", "smooth_l1", "giou"]
"""The box loss: "l1" on the deltas (torchvision's v1), "smooth_l1" on the deltas (the paper, beta
``smooth_l1_beta``), "giou" on the decoded boxes (torchvision's v2)."""


class RetinaNetLoss(nn.Module):
    """RetinaNet's losses of a whole batch (see the module docstring); holds settings only, no parameters.

    Args:
        num_classes: object classes.
        box_coder: the deltas' coder (weights (1, 1, 1, 1) in torchvision).
        fg_iou_thresh, bg_iou_thresh: :func:`~detforge.assigners.retinanet.assign_anchors`' thresholds.
        focal_alpha, focal_gamma: the focal loss's.
        box_loss: :data:`RetinaNetBoxLoss`.
        smooth_l1_beta: the smooth L1's beta (detectron's RetinaNet: 0.1).
        cls_weight, reg_weight: weights of the two parts in ``loss``.

    ``forward(cls_logits [B, P, C], deltas [B, P, 4], anchors [P, 4], gt_boxes [B, G, 4], gt_labels [B, G],
    gt_mask [B, G])`` returns ``loss`` (the weighted sum), the detached ``classification`` and
    ``bbox_regression`` and ``num_pos`` (the batch's foreground anchors).
    """

    def __init__(
        self,
        num_classes: int,
        box_coder: AnchorBoxCoder,
        fg_iou_thresh: float = 0.5,
        bg_iou_thresh: float = 0.4,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        box_loss: RetinaNetBoxLoss = "l1",
        smooth_l1_beta: float = 0.1,
        cls_weight: float = 1.0,
        reg_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if box_loss not in get_args(RetinaNetBoxLoss):
            raise ValueError(f"box_loss must be one of {get_args(RetinaNetBoxLoss)}, got {box_loss!r}")
        if not 0.0 <= bg_iou_thresh <= fg_iou_thresh <= 1.0:
            raise ValueError(
                f"need 0 <= bg_iou_thresh <= fg_iou_thresh <= 1, got {bg_iou_thresh}, {fg_iou_thresh}"
            )
        if not (0.0 <= focal_alpha <= 1.0 or focal_alpha == -1) or focal_gamma < 0:
            raise ValueError(
                f"need focal_alpha in [0, 1] (or -1) and focal_gamma >= 0, got {focal_alpha}, {focal_gamma}"
            )
        if smooth_l1_beta < 0:
            raise ValueError(f"smooth_l1_beta must be >= 0, got {smooth_l1_beta}")
        self.num_classes = int(num_classes)
        self.box_coder = box_coder
        self.iou_thresholds = (float(fg_iou_thresh), float(bg_iou_thresh))
        self.focal = (float(focal_alpha), float(focal_gamma))
        self.box_loss = box_loss
        self.smooth_l1_beta = float(smooth_l1_beta)
        self.weights = (float(cls_weight), float(reg_weight))

    def forward(
        self,
        cls_logits: Tensor,
        deltas: Tensor,
        anchors: Tensor,
        gt_boxes: Tensor,
        gt_labels: Tensor,
        gt_mask: Tensor,
    ) -> dict[str, Tensor]:
        check_labels(gt_labels, gt_mask, self.num_classes)
        targets = assign_anchors(anchors, gt_boxes, gt_labels, gt_mask, *self.iou_thresholds)
        per_image_fg = targets.foreground.sum(1).clamp(min=1).float()  # [B]
        classification = self._classification(cls_logits, targets) / per_image_fg  # [B]
        regression = self._regression(deltas, anchors, targets) / per_image_fg  # [B]
        classification, regression = classification.mean(), regression.mean()
        total = self.weights[0] * classification + self.weights[1] * regression
        return {
            "loss": total,
            "classification": classification.detach(),
            "bbox_regression": regression.detach(),
            "num_pos": targets.foreground.sum().detach().float(),
        }

    def _classification(self, cls_logits: Tensor, targets: AnchorTargets) -> Tensor:
        """Focal loss summed over the valid anchors of each image: Tensor[B]."""
        one_hot = labels_to_one_hot(targets.labels, self.num_classes)  # [B, P, C]
        logits = _at_least_float32(cls_logits)  # [B, P, C]
        one_hot = one_hot.to(logits.dtype)
        loss = sigmoid_focal_loss(logits, one_hot, *self.focal, reduction="none")  # [B, P, C]
        return torch.where(targets.valid[..., None], loss, 0.0).sum((1, 2))  # [B]

    def _regression(self, deltas: Tensor, anchors: Tensor, targets: AnchorTargets) -> Tensor:
        """Box loss summed over the foreground anchors of each image: Tensor[B] (only those anchors are
        gathered: a few hundred of the batch's ~10^5)."""
        image_idx, anchor_idx = targets.foreground.nonzero(as_tuple=True)  # [N] each
        pred = _at_least_float32(deltas[image_idx, anchor_idx])  # [N, 4]
        own_anchors = anchors[anchor_idx].to(pred.dtype)  # [N, 4]
        boxes = targets.boxes[image_idx, anchor_idx].to(pred.dtype)  # [N, 4]
        if self.box_loss == "giou":
            decoded = self.box_coder.decode(own_anchors, pred)  # [N, 4]
            per_anchor = generalized_box_iou_loss(decoded, boxes, reduction="none", eps=1e-7)  # [N]
        else:
            target = self.box_coder.encode(own_anchors, boxes)  # [N, 4]
            if self.box_loss == "l1":
                per_anchor = (pred - target).abs().sum(-1)  # [N]
            else:
                per_anchor = F.smooth_l1_loss(pred, target, reduction="none", beta=self.smooth_l1_beta).sum(
                    -1
                )
        return pred.new_zeros(deltas.shape[0]).index_add(0, image_idx, per_anchor)  # [B]


def _at_least_float32(x: Tensor) -> Tensor:
    """``x`` in float32, or float64 when it is (bfloat16 / float16 head outputs are lifted)."""
    return x if x.dtype == torch.float64 else x.float()
