"""One-to-one matching of predictions to ground truth for set prediction (DETR), via the Hungarian method.

The cost of giving target ``j`` to query ``i`` is
``cost_class * -p_i(label_j) + cost_bbox * L1(box_i, box_j) + cost_giou * -GIoU(box_i, box_j)``
with ``p_i`` the softmax over query ``i``'s class logits. ``scipy.optimize.linear_sum_assignment`` finds the
cheapest matching per image; every cost term is computed for the whole batch at once.
"""

from __future__ import annotations

import warnings

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn
from torchvision.ops import generalized_box_iou

from detforge.boxes import convert_boxes

__all__ = ["HungarianMatcher"]

# Stands in for missing targets of images with fewer boxes than the batch max; its costs are never read.
_PAD_BOX = (0.5, 0.5, 1.0, 1.0)


class HungarianMatcher(nn.Module):
    """Match queries to targets one-to-one, image by image, at the lowest total cost.

    Boxes are DETR's normalised ``(cx, cy, w, h)`` in [0, 1], for predictions and targets alike: convert the
    library's xyxy pixel targets with :func:`detforge.boxes.xyxy_to_cxcywh_norm` first.

    Args:
        cost_class: weight of the class cost (negative softmax probability of the target's class).
        cost_bbox: weight of the L1 distance between the cxcywh boxes.
        cost_giou: weight of the negative generalized IoU (computed on the xyxy form of the boxes).
    """

    def __init__(self, cost_class: float = 1.0, cost_bbox: float = 5.0, cost_giou: float = 2.0) -> None:
        super().__init__()
        costs = {"cost_class": cost_class, "cost_bbox": cost_bbox, "cost_giou": cost_giou}
        if any(v < 0 for v in costs.values()):
            raise ValueError(f"cost weights must be >= 0, got {costs}")
        if all(v == 0 for v in costs.values()):
            raise ValueError("at least one of cost_class, cost_bbox, cost_giou must be > 0")
        self.cost_class = float(cost_class)
        self.cost_bbox = float(cost_bbox)
        self.cost_giou = float(cost_giou)

    def extra_repr(self) -> str:
        return f"cost_class={self.cost_class}, cost_bbox={self.cost_bbox}, cost_giou={self.cost_giou}"

    @torch.no_grad()
    def cost_matrix(self, pred_logits: Tensor, pred_boxes: Tensor, targets: list[dict]) -> Tensor:
        """Matching cost of every query against every (padded) target of its image.

        Args:
            pred_logits: Tensor[B, Q, C], class logits (DETR's last column is "no object"; it is never a
                target label, so it only enters through the softmax).
            pred_boxes: Tensor[B, Q, 4], normalised cxcywh.
            targets: B dicts with ``labels`` (Tensor[N_i] int64 in [0, C)) and ``boxes`` (Tensor[N_i, 4],
                normalised cxcywh).

        Returns:
            Tensor[B, Q, G] float32 with G = max N_i; columns ``>= N_i`` of image ``i`` are padding.
        """
        num_images, num_queries, num_classes = pred_logits.shape
        if pred_boxes.shape != (num_images, num_queries, 4):
            raise ValueError(
                f"pred_boxes must be [B, Q, 4] = {(num_images, num_queries, 4)}, got {tuple(pred_boxes.shape)}"
            )
        if len(targets) != num_images:
            raise ValueError(f"got {len(targets)} target dicts for a batch of {num_images} images")
        device = pred_logits.device
        sizes = [self._check_target(i, t, num_classes) for i, t in enumerate(targets)]
        num_gt = max(sizes, default=0)

        tgt_labels = torch.zeros(num_images, num_gt, dtype=torch.int64, device=device)  # [B, G]
        tgt_boxes = torch.tensor(_PAD_BOX, device=device).repeat(num_images, num_gt, 1)  # [B, G, 4]
        for i, (t, n) in enumerate(zip(targets, sizes)):
            tgt_labels[i, :n] = t["labels"].to(device)
            tgt_boxes[i, :n] = t["boxes"].to(device=device, dtype=torch.float32)

        prob = pred_logits.float().softmax(-1)  # [B, Q, C]
        cost_class = -prob.gather(2, tgt_labels[:, None, :].expand(-1, num_queries, -1))  # [B, Q, G]
        boxes = pred_boxes.float()  # [B, Q, 4]
        cost_bbox = torch.cdist(boxes, tgt_boxes, p=1)  # [B, Q, G]
        cost_giou = -generalized_box_iou(
            convert_boxes(boxes, "cxcywh", "xyxy"), convert_boxes(tgt_boxes, "cxcywh", "xyxy")
        )  # [B, Q, G]
        return self.cost_class * cost_class + self.cost_bbox * cost_bbox + self.cost_giou * cost_giou

    @torch.no_grad()
    def forward(
        self, pred_logits: Tensor, pred_boxes: Tensor, targets: list[dict]
    ) -> list[tuple[Tensor, Tensor]]:
        """Match each image's queries to its targets (shapes as in :meth:`cost_matrix`).

        Returns:
            per image ``(pred_idx, tgt_idx)``, both Tensor[K] int64 on ``pred_logits``' device, sorted by
            ``pred_idx``: query ``pred_idx[k]`` learns target ``tgt_idx[k]``. K = min(N_i, Q); an image with
            no targets gets two empty tensors. When N_i > Q a warning names the image (some targets stay
            unmatched).
        """
        num_queries = pred_logits.shape[1]
        cost = self.cost_matrix(pred_logits, pred_boxes, targets)  # [B, Q, G]
        cost_cpu = cost.cpu()
        device = pred_logits.device
        out: list[tuple[Tensor, Tensor]] = []
        for i, t in enumerate(targets):
            n = int(t["boxes"].shape[0])
            if n > num_queries:
                warnings.warn(
                    f"HungarianMatcher: image {i} of the batch has {n} targets but only {num_queries} queries; "
                    f"{n - num_queries} targets stay unmatched",
                    stacklevel=2,
                )
            rows, cols = linear_sum_assignment(cost_cpu[i, :, :n].numpy())
            out.append(
                (
                    torch.as_tensor(rows, dtype=torch.int64, device=device),
                    torch.as_tensor(cols, dtype=torch.int64, device=device),
                )
            )
        return out

    @staticmethod
    def _check_target(index: int, target: dict, num_classes: int) -> int:
        """Validate one target dict and return its box count."""
        boxes, labels = target.get("boxes"), target.get("labels")
        if boxes is None or labels is None:
            raise ValueError(
                f"HungarianMatcher: target {index} needs 'boxes' and 'labels', has {sorted(target)}"
            )
        if boxes.ndim != 2 or boxes.shape[1] != 4 or labels.shape != boxes.shape[:1]:
            raise ValueError(
                f"HungarianMatcher: target {index} has boxes {tuple(boxes.shape)} and labels {tuple(labels.shape)}; "
                "expected [N, 4] and [N]"
            )
        if boxes.numel() and not bool(torch.isfinite(boxes).all()):
            raise ValueError(f"HungarianMatcher: target {index} has non-finite boxes")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
            raise ValueError(
                f"HungarianMatcher: target {index} has labels in [{int(labels.min())}, {int(labels.max())}], "
                f"outside the {num_classes} classes of pred_logits"
            )
        return int(boxes.shape[0])
