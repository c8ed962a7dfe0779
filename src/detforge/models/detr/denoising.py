"""Contrastive denoising queries (DN-DETR, Li et al. 2022; DINO, Zhang et al. 2023), for training only.

The decoder gets, in front of its matching queries, groups of noised copies of the ground truth: in each
group a *positive* copy of every box (label flipped with probability ``label_noise_ratio / 2``, corners moved
by less than ``box_noise_scale`` times half the box's width / height) that must be reconstructed, and a
*negative* copy (corners moved by 1 to 2 times that) that must be classified as background. An attention
mask keeps the groups from seeing each other and the matching queries from seeing any denoising query, so
the matching part of the decoder computes what it computes without them (denoising queries do see the
matching ones, as in RT-DETR).

Built from the library's padded targets (:func:`detforge.targets.pad_targets`) for the whole batch at once:
every image gets the batch's largest box count G per half-group, padded slots carry the padding label
``num_classes`` and never enter the loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from detforge.boxes import convert_boxes

__all__ = ["DenoisingQueries", "denoising_queries"]


@dataclass
class DenoisingQueries:
    """What :func:`denoising_queries` builds (D = 2 * num_groups * G denoising queries per image).

    Attributes:
        labels: Tensor[B, D] int64, noised class ids; ``num_classes`` on padded slots (the padding label).
        boxes: Tensor[B, D, 4], noised boxes, normalised cx cy w h in [0, 1].
        attn_mask: Tensor[D + Q, D + Q] bool, True where a query may NOT attend (denoising queries first).
        positive: Tensor[B, D] bool, the positive copies of real boxes (the reconstruction targets).
        valid: Tensor[B, D] bool, slots holding a real box's copy (positive or negative).
        gt_index: Tensor[D] int64, the padded target index each slot copies (slot mod G).
        num_groups: groups of (positive, negative) copies.
    """

    labels: Tensor
    boxes: Tensor
    attn_mask: Tensor
    positive: Tensor
    valid: Tensor
    gt_index: Tensor
    num_groups: int

    @property
    def num_queries(self) -> int:
        return int(self.labels.shape[1])


def denoising_queries(
    gt_boxes: Tensor,
    gt_labels: Tensor,
    gt_mask: Tensor,
    image_sizes: Tensor,
    num_classes: int,
    num_matching_queries: int,
    num_denoising: int = 100,
    label_noise_ratio: float = 0.5,
    box_noise_scale: float = 1.0,
    generator: torch.Generator | None = None,
) -> DenoisingQueries | None:
    """Noised ground-truth queries and the decoder's self-attention mask; None when the batch has no box
    (or ``num_denoising`` is 0).

    Args:
        gt_boxes: Tensor[B, G, 4] xyxy pixels; gt_labels: Tensor[B, G] int64; gt_mask: Tensor[B, G] bool
            (real boxes), as :func:`detforge.targets.pad_targets` returns them.
        image_sizes: Tensor[B, 2] (h, w) each image's boxes are normalised by.
        num_classes: C (the padding label is C).
        num_matching_queries: Q, the matching queries that follow the denoising ones.
        num_denoising: about how many denoising queries per image: ``max(1, num_denoising // G)`` groups of
            2 * G.
        label_noise_ratio: twice the probability that a copy's label is replaced by a random class.
        box_noise_scale: the corner noise in units of half the box's width / height.
        generator: random generator (default: torch's global one).
    """
    b, g = gt_labels.shape
    if g == 0 or num_denoising <= 0 or not bool(gt_mask.any()):
        return None
    device = gt_boxes.device
    num_groups = max(1, num_denoising // g)
    d = 2 * num_groups * g
    slot = torch.arange(d, device=device)  # [D]
    gt_index = slot % g  # [D] the copied target of each slot
    positive_slot = (slot % (2 * g)) < g  # [D] first half of each group
    valid = gt_mask[:, gt_index]  # [B, D]
    positive = valid & positive_slot[None]  # [B, D]

    def rand(*shape: int) -> Tensor:
        return torch.rand(*shape, device=device, generator=generator)

    labels = gt_labels[:, gt_index].clone()  # [B, D]
    flip = rand(b, d) < label_noise_ratio * 0.5
    random_labels = (rand(b, d) * num_classes).long().clamp(max=num_classes - 1)
    labels = torch.where(flip, random_labels, labels)
    labels = labels.masked_fill(~valid, num_classes)

    scale = image_sizes.to(gt_boxes.dtype).flip(-1).repeat(1, 2)[:, None]  # [B, 1, 4] (w, h, w, h)
    xyxy = gt_boxes[:, gt_index] / scale  # [B, D, 4] normalised corners
    wh = xyxy[..., 2:] - xyxy[..., :2]  # [B, D, 2]
    half = (0.5 * wh).repeat(1, 1, 2) * box_noise_scale  # [B, D, 4]
    sign = torch.where(rand(b, d, 4) < 0.5, -1.0, 1.0).to(xyxy.dtype)
    magnitude = rand(b, d, 4) + (~positive_slot).to(xyxy.dtype)[None, :, None]  # [0, 1) pos, [1, 2) neg
    noised = (xyxy + sign * magnitude * half).clamp(0.0, 1.0)  # [B, D, 4]
    lo, hi = torch.minimum(noised[..., :2], noised[..., 2:]), torch.maximum(noised[..., :2], noised[..., 2:])
    boxes = convert_boxes(torch.cat([lo, hi], -1), "xyxy", "cxcywh")  # [B, D, 4]
    boxes = torch.where(valid[..., None], boxes, boxes.new_tensor([0.5, 0.5, 0.1, 0.1]))

    group = torch.cat([slot // (2 * g), torch.full((num_matching_queries,), -1, device=device)])  # [D + Q]
    attn_mask = group[:, None] != group[None, :]  # [D + Q, D + Q] other groups blocked
    attn_mask[:, d:] = False  # every query sees the matching ones; these see no denoising query (above)
    return DenoisingQueries(labels, boxes, attn_mask, positive, valid, gt_index, num_groups)
