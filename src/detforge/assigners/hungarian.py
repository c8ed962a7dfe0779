"""One-to-one matching of predictions to ground truth for set prediction (DETR), via the Hungarian method.

The cost of giving target ``j`` to query ``i`` is
``cost_class * -p_i(label_j) + cost_bbox * L1(box_i, box_j) + cost_giou * -GIoU(box_i, box_j)``
with ``p_i`` the softmax over query ``i``'s class logits (DETR), or, with ``class_cost="focal"`` (Deformable
DETR, DINO, RT-DETR: sigmoid logits without a no-object column), the focal loss of calling ``label_j`` positive
minus that of calling it negative. ``scipy.optimize.linear_sum_assignment`` finds the cheapest matching per
image; every cost term is computed for the whole batch at once. :meth:`HungarianMatcher.match_padded` takes
the library's padded targets (:func:`detforge.targets.pad_targets`) directly.
"""

from __future__ import annotations

import warnings
from typing import Literal

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn
from torchvision.ops import generalized_box_iou

from detforge.boxes import convert_boxes

__all__ = ["ClassCost", "HungarianMatcher"]

ClassCost = Literal["softmax", "focal"]

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
        class_cost: ``softmax`` (DETR: negative softmax probability, the last logit is "no object") or
            ``focal`` (sigmoid logits, one per class: ``alpha (1-p)^gamma -log p - (1-alpha) p^gamma -log(1-p)``).
        focal_alpha, focal_gamma: the focal class cost's alpha and gamma (0.25, 2).
    """

    def __init__(
        self,
        cost_class: float = 1.0,
        cost_bbox: float = 5.0,
        cost_giou: float = 2.0,
        class_cost: ClassCost = "softmax",
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ) -> None:
        super().__init__()
        if class_cost not in ("softmax", "focal"):
            raise ValueError(f"class_cost must be 'softmax' or 'focal', got {class_cost!r}")
        self.class_cost = class_cost
        self.focal_alpha = float(focal_alpha)
        self.focal_gamma = float(focal_gamma)
        costs = {"cost_class": cost_class, "cost_bbox": cost_bbox, "cost_giou": cost_giou}
        if any(v < 0 for v in costs.values()):
            raise ValueError(f"cost weights must be >= 0, got {costs}")
        if all(v == 0 for v in costs.values()):
            raise ValueError("at least one of cost_class, cost_bbox, cost_giou must be > 0")
        self.cost_class = float(cost_class)
        self.cost_bbox = float(cost_bbox)
        self.cost_giou = float(cost_giou)

    def extra_repr(self) -> str:
        return (
            f"cost_class={self.cost_class}, cost_bbox={self.cost_bbox}, cost_giou={self.cost_giou}, "
            f"class_cost={self.class_cost!r}"
        )

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
        return self.padded_cost_matrix(pred_logits, pred_boxes, tgt_boxes, tgt_labels)

    @torch.no_grad()
    def padded_cost_matrix(
        self, pred_logits: Tensor, pred_boxes: Tensor, tgt_boxes: Tensor, tgt_labels: Tensor
    ) -> Tensor:
        """:meth:`cost_matrix` of padded targets: ``tgt_boxes`` Tensor[B, G, 4] normalised cxcywh and
        ``tgt_labels`` Tensor[B, G] int64 (any value where padded; it is clamped into range and never read).

        Returns:
            Tensor[B, Q, G] float32.
        """
        num_images, num_queries, num_classes = pred_logits.shape
        if pred_boxes.shape != (num_images, num_queries, 4):
            raise ValueError(
                f"pred_boxes must be [B, Q, 4] = {(num_images, num_queries, 4)}, got {tuple(pred_boxes.shape)}"
            )
        num_gt = tgt_labels.shape[1]
        if tgt_boxes.shape != (num_images, num_gt, 4) or tgt_labels.shape != (num_images, num_gt):
            raise ValueError(
                f"tgt_boxes must be [B, G, 4] and tgt_labels [B, G] with B = {num_images}, got "
                f"{tuple(tgt_boxes.shape)} and {tuple(tgt_labels.shape)}"
            )
        labels = tgt_labels.clamp(0, num_classes - 1)[:, None, :].expand(-1, num_queries, -1)  # [B, Q, G]
        logits = pred_logits.float()  # [B, Q, C]
        if self.class_cost == "softmax":
            cost_class = -logits.softmax(-1).gather(2, labels)  # [B, Q, G]
        else:
            prob = logits.sigmoid().gather(2, labels)  # [B, Q, G]
            alpha, gamma = self.focal_alpha, self.focal_gamma
            neg = (1 - alpha) * prob.pow(gamma) * -(1 - prob + 1e-8).log()
            pos = alpha * (1 - prob).pow(gamma) * -(prob + 1e-8).log()
            cost_class = pos - neg
        boxes = pred_boxes.float()  # [B, Q, 4]
        tgt_boxes = tgt_boxes.float()
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
        cost = self.cost_matrix(pred_logits, pred_boxes, targets)  # [B, Q, G]
        counts = [int(t["boxes"].shape[0]) for t in targets]
        mask = torch.arange(cost.shape[2])[None, :] < torch.tensor(counts, dtype=torch.int64)[:, None]
        return self._assign(cost, mask, pred_logits.device)

    @torch.no_grad()
    def match_padded(
        self, pred_logits: Tensor, pred_boxes: Tensor, tgt_boxes: Tensor, tgt_labels: Tensor, tgt_mask: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Match a batch against padded targets, flat (ready for indexing).

        Args:
            pred_logits: Tensor[B, Q, C]; pred_boxes: Tensor[B, Q, 4] normalised cxcywh.
            tgt_boxes: Tensor[B, G, 4] normalised cxcywh (:func:`detforge.boxes.xyxy_to_rel_cxcywh` of the
                padded xyxy pixels); tgt_labels: Tensor[B, G] int64; tgt_mask: Tensor[B, G] bool, True for
                real targets (:func:`detforge.targets.pad_targets`).

        Returns:
            ``(batch_idx, pred_idx, tgt_idx)``, each Tensor[K] int64 on ``pred_logits``' device: query
            ``pred_idx[k]`` of image ``batch_idx[k]`` learns padded target ``tgt_idx[k]`` of that image.
        """
        cost = self.padded_cost_matrix(pred_logits, pred_boxes, tgt_boxes, tgt_labels)  # [B, Q, G]
        pairs = self._assign(cost, tgt_mask, pred_logits.device)
        batch_idx = torch.cat([torch.full_like(p, i) for i, (p, _) in enumerate(pairs)])  # [K]
        pred_idx = torch.cat([p for p, _ in pairs])  # [K]
        tgt_idx = torch.cat([t for _, t in pairs])  # [K]
        return batch_idx, pred_idx, tgt_idx

    @staticmethod
    def _assign(cost: Tensor, mask: Tensor, device: torch.device) -> list[tuple[Tensor, Tensor]]:
        """Per image, the cheapest matching of the queries to the targets where ``mask`` (Tensor[B, G]) is
        True: ``(pred_idx, tgt_idx)`` per image, tgt_idx indexing the padded G columns."""
        num_queries = cost.shape[1]
        cost_cpu, mask_cpu = cost.cpu(), mask.cpu().bool()
        out: list[tuple[Tensor, Tensor]] = []
        for i in range(cost_cpu.shape[0]):
            columns = mask_cpu[i].nonzero().flatten()  # [N_i]
            n = int(columns.numel())
            if n > num_queries:
                warnings.warn(
                    f"HungarianMatcher: image {i} of the batch has {n} targets but only {num_queries} queries; "
                    f"{n - num_queries} targets stay unmatched",
                    stacklevel=3,
                )
            rows, cols = linear_sum_assignment(cost_cpu[i][:, columns].numpy())
            out.append(
                (
                    torch.as_tensor(rows, dtype=torch.int64, device=device),
                    columns[torch.as_tensor(cols, dtype=torch.int64)].to(device),
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
