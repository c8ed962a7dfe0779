"""Turn the per-image target dicts of a batch into padded tensors for losses and assigners, and map boxes back
to the original images (``to_original_size``, ``metric_targets``).

Boxes flagged ``iscrowd`` or ``ignore`` never become training targets; evaluation still sees them.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

__all__ = [
    "check_target_boxes",
    "image_sizes_of",
    "metric_targets",
    "pad_targets",
    "to_original_size",
    "training_mask",
]

NORMALIZED_MAX = 1.5
"""An image whose every box coordinate is within [0, NORMALIZED_MAX] looks normalized (if the image is larger)."""
NORMALIZED_MIN_IMAGE = 16
"""Images up to this many pixels on their longer side are never called normalized."""


def _image_name(targets: list[dict], i: int) -> str:
    image_id = targets[i].get("image_id")
    if isinstance(image_id, Tensor) and image_id.numel() == 1:
        image_id = image_id.item()
    return f"image_id {image_id}" if image_id is not None else f"image {i} of the batch"


def check_target_boxes(targets: list[dict], image_size: tuple[int, int] | None = None) -> None:
    """Catch boxes that would train on nothing, before a loss sees them (every :class:`Detector` calls this).

    - an inverted box (x2 < x1 or y2 < y1): ValueError naming the image (its ``image_id``, else its index in
      the batch) and the box;
    - an image whose boxes all lie within [0, 1.5] while the image is larger than 16 px (normalized
      coordinates): one ``UserWarning`` per call, counting such images and naming the first, pointing to
      :func:`detforge.boxes.scale_boxes`.

    Args:
        targets: per-image dicts with ``boxes`` (Tensor[N_i, 4] xyxy pixels), optional ``size`` (h, w) and
            ``image_id``.
        image_size: (h, w) of the batch tensor, for targets without ``size``; None: assume larger than 16 px.

    One vectorised pass over the concatenated boxes and one host sync; Python runs per image only to build
    the message when something is wrong.
    """
    counts = [t["boxes"].shape[0] for t in targets]
    if not targets or sum(counts) == 0:
        return
    boxes = torch.cat([t["boxes"].reshape(-1, 4) for t in targets]).detach()  # [N, 4]
    device = boxes.device
    owner = torch.repeat_interleave(torch.arange(len(targets), device=device), torch.tensor(counts, device=device))
    inverted = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])  # [N]
    small = ((boxes >= 0) & (boxes <= NORMALIZED_MAX)).all(dim=1)  # [N]
    # per image: how many boxes are NOT within [0, 1.5] (an image is normalized-looking when none are)
    outside = torch.zeros(len(targets), device=device).index_add_(0, owner, (~small).float())  # [B]
    has_boxes = torch.tensor(counts, device=device) > 0  # [B]
    big = torch.tensor(
        [
            max(int(v) for v in t["size"]) > NORMALIZED_MIN_IMAGE
            if "size" in t
            else image_size is None or max(image_size) > NORMALIZED_MIN_IMAGE
            for t in targets
        ],
        device=device,
    )  # [B]
    normalized = has_boxes & big & (outside == 0)  # [B]
    num_inverted, num_normalized = torch.stack([inverted.sum(), normalized.sum()]).tolist()
    if num_inverted:
        k = int(inverted.nonzero()[0, 0])
        i = int(owner[k])
        raise ValueError(
            f"{_image_name(targets, i)} has an inverted box {boxes[k].tolist()} (x2 < x1 or y2 < y1; boxes are "
            f"xyxy pixels); {num_inverted} inverted box(es) in this batch"
        )
    if num_normalized:
        i = int(normalized.nonzero()[0, 0])
        first = boxes[int((owner == i).nonzero()[0, 0])].tolist()
        warnings.warn(
            f"{num_normalized} of {len(targets)} image(s) have every box within [0, {NORMALIZED_MAX}]: they look "
            f"normalized, but boxes are xyxy pixels (first: {_image_name(targets, i)}, box {first}); convert "
            "with detforge.boxes.scale_boxes(boxes, (1, 1), (height, width)) "
            "(or detforge.boxes.cxcywh_norm_to_xyxy for YOLO cx cy w h)",
            UserWarning,
            stacklevel=3,
        )


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
