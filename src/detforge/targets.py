"""Turn the per-image target dicts of a batch into padded tensors for losses and assigners, and map boxes back
to the original images (``to_original_size``, ``metric_targets``).

Boxes flagged ``iscrowd`` or ``ignore`` never become training targets; evaluation still sees them.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["image_sizes_of", "metric_targets", "pad_targets", "to_original_size", "training_mask"]


def training_mask(target: dict) -> Tensor:
    """Bool Tensor[N]: which boxes of one target dict are training targets (not crowd, not ignored)."""
    n = target["boxes"].shape[0]
    keep = torch.ones(n, dtype=torch.bool, device=target["boxes"].device)
    for key in ("iscrowd", "ignore"):
        if key in target and target[key] is not None and len(target[key]) == n:
            keep &= ~target[key].to(device=keep.device).bool()
    return keep


def pad_targets(targets: list[dict], device: torch.device | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Pad a batch of targets to the largest box count.

    Args:
        targets: per-image dicts with ``boxes`` (Tensor[N_i, 4], xyxy pixels) and ``labels`` (Tensor[N_i]).
        device: where the padded tensors live (default: the first target's boxes' device).

    Returns:
        gt_boxes (Tensor[B, G, 4] float32, zeros where padded), gt_labels (Tensor[B, G] int64, -1 where padded),
        gt_mask (Tensor[B, G] bool, True for real training boxes). G >= 0 is the largest training-box count.
    """
    if device is None:
        device = targets[0]["boxes"].device if targets else torch.device("cpu")
    kept = []
    for t in targets:
        keep = training_mask(t)
        kept.append((t["boxes"][keep].to(device, torch.float32), t["labels"][keep].to(device, torch.int64)))
    g = max((b.shape[0] for b, _ in kept), default=0)
    b = len(targets)
    gt_boxes = torch.zeros(b, g, 4, dtype=torch.float32, device=device)
    gt_labels = torch.full((b, g), -1, dtype=torch.int64, device=device)
    gt_mask = torch.zeros(b, g, dtype=torch.bool, device=device)
    for i, (boxes, labels) in enumerate(kept):
        n = boxes.shape[0]
        gt_boxes[i, :n] = boxes
        gt_labels[i, :n] = labels
        gt_mask[i, :n] = True
    return gt_boxes, gt_labels, gt_mask


def image_sizes_of(targets: list[dict], images: Tensor) -> list[tuple[int, int]]:
    """(h, w) of each unpadded image: ``target["size"]`` when present, else the batch tensor's H, W."""
    h, w = images.shape[-2:]
    return [tuple(int(v) for v in t["size"]) if "size" in t else (int(h), int(w)) for t in targets]


def to_original_size(
    items: list[dict], targets: list[dict], keys: tuple[str, ...] = ("boxes",)
) -> list[dict]:
    """Rescale each dict's xyxy ``keys`` (Tensor[K, 4], network-input pixels) to the original image.

    Args:
        items: per-image dicts (predictions or targets), one per entry of ``targets``.
        targets: the batch's target dicts; ``size`` (h, w) of the network input (unpadded) and ``orig_size``
            (h, w) of the image on disk. Without them the boxes are returned unchanged. Padding is
            bottom/right, so a per-axis scale maps a letterboxed image back exactly.
    """
    out = []
    for item, target in zip(items, targets, strict=True):
        item = dict(item)
        if "size" in target and "orig_size" in target:
            (h, w), (oh, ow) = target["size"].tolist(), target["orig_size"].tolist()
            if (h, w) != (oh, ow):
                for key in keys:
                    scale = item[key].new_tensor([ow / w, oh / h, ow / w, oh / h])  # [4]
                    item[key] = item[key] * scale  # [K, 4]
        out.append(item)
    return out


def metric_targets(targets: list[dict]) -> list[dict]:
    """Ground truth for the metric in original-image pixels: ``boxes``, ``labels`` and, when present,
    ``iscrowd``, ``ignore`` and ``area`` (scaled with the boxes, so COCO's area ranges match the file's)."""
    out = []
    for target in targets:
        gt = {"boxes": target["boxes"], "labels": target["labels"]}
        for key in ("iscrowd", "ignore", "area"):
            if isinstance(target.get(key), Tensor) and target[key].shape[:1] == target["labels"].shape[:1]:
                gt[key] = target[key]
        if "area" in gt and "size" in target and "orig_size" in target:
            (h, w), (oh, ow) = target["size"].tolist(), target["orig_size"].tolist()
            gt["area"] = gt["area"] * (oh / h) * (ow / w)
        out.append(gt)
    return to_original_size(out, targets)
