"""Anchor sizes from data: k-means over box sizes with the ``1 - IoU`` distance (YOLOv2 / YOLOv3).

- :func:`shape_iou`: IoU of box sizes placed on one centre (only the widths and heights matter);
- :func:`kmeans_anchors`: ``k`` anchor sizes of a set of box sizes and their mean best IoU;
- :func:`dataset_boxes_wh`: the training boxes' sizes of a data set at the network input size, as the
  letterboxing data pipeline gives them (the longer side of each image scaled to ``imgsz``);
- :data:`COCO_ANCHORS`: YOLOv3's nine COCO anchors, pixels at a 416 px input.

Used by ``detforge anchors`` and by ``--model.anchors auto`` (the Lightning module fits the model's anchors
to the training data before training starts).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["COCO_ANCHORS", "COCO_ANCHORS_SIZE", "dataset_boxes_wh", "kmeans_anchors", "shape_iou"]

COCO_ANCHORS: tuple[tuple[float, float], ...] = (
    (10, 13), (16, 30), (33, 23), (30, 61), (62, 45), (59, 119), (116, 90), (156, 198), (373, 326),
)  # fmt: skip
"""YOLOv3's anchors (w, h), pixels at a ``COCO_ANCHORS_SIZE`` input, smallest first (three per stride 8, 16, 32)."""
COCO_ANCHORS_SIZE = 416


def shape_iou(wh1: Tensor, wh2: Tensor) -> Tensor:
    """IoU of boxes of sizes ``wh1`` (Tensor[N, 2]) and ``wh2`` (Tensor[K, 2]) sharing one centre ->
    Tensor[N, K]."""
    inter = torch.minimum(wh1[:, None, 0], wh2[None, :, 0]) * torch.minimum(wh1[:, None, 1], wh2[None, :, 1])
    area1 = wh1[:, 0] * wh1[:, 1]  # [N]
    area2 = wh2[:, 0] * wh2[:, 1]  # [K]
    return inter / (area1[:, None] + area2[None, :] - inter).clamp(min=1e-12)


def kmeans_anchors(wh: Tensor, k: int = 9, iters: int = 300, seed: int = 0) -> tuple[Tensor, float]:
    """K-means with the ``1 - IoU`` distance over box sizes (YOLOv2's dimension clusters).

    Seeded k-means++ start (each next centre drawn with probability proportional to its ``1 - best IoU``),
    then Lloyd iterations: each size joins the centre of highest shape IoU, each centre becomes the mean of
    its members (an empty cluster keeps its centre), until nothing moves or ``iters`` rounds.

    Args:
        wh: Tensor[N, 2] box widths and heights in pixels (sizes <= 0 are dropped).
        k: clusters (9 for YOLOv3: three per scale).
        iters: most Lloyd iterations.
        seed: seeds the start, so the result repeats.

    Returns:
        anchors (Tensor[k, 2] float32 (w, h), sorted by area, smallest first) and the mean over the boxes of
        their best IoU with an anchor.

    Raises:
        ValueError: fewer than ``k`` boxes of positive size, or ``k < 1``.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    wh = torch.as_tensor(wh, dtype=torch.float64).reshape(-1, 2)
    wh = wh[(wh > 0).all(1)]  # [N, 2]
    if wh.shape[0] < k:
        raise ValueError(f"k-means needs at least k={k} boxes of positive size, got {wh.shape[0]}")
    gen = torch.Generator().manual_seed(int(seed))
    centres = wh[torch.randint(wh.shape[0], (1,), generator=gen)]  # [1, 2]
    for _ in range(k - 1):  # k-means++ start with the 1 - IoU distance
        dist = 1.0 - shape_iou(wh, centres).max(1).values  # [N]
        if float(dist.sum()) <= 0:
            pick = torch.randint(wh.shape[0], (1,), generator=gen)
        else:
            pick = torch.multinomial(dist, 1, generator=gen)
        centres = torch.cat([centres, wh[pick]])
    assign = torch.full((wh.shape[0],), -1, dtype=torch.int64)
    for _ in range(int(iters)):
        new_assign = shape_iou(wh, centres).argmax(1)  # [N]
        if torch.equal(new_assign, assign):
            break
        assign = new_assign
        sums = torch.zeros(k, 2, dtype=wh.dtype).index_add_(0, assign, wh)  # [k, 2]
        counts = torch.bincount(assign, minlength=k).to(wh.dtype)  # [k]
        centres = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], centres)
    centres = centres[(centres[:, 0] * centres[:, 1]).argsort()]  # [k, 2] smallest area first
    mean_best = float(shape_iou(wh, centres).max(1).values.mean())
    return centres.float(), mean_best


def dataset_boxes_wh(dataset, imgsz: int, max_images: int | None = None) -> Tensor:
    """Sizes (Tensor[N, 2] float32, pixels) of a data set's training boxes at the network input ``imgsz``:
    each image's boxes scaled by ``imgsz / max(h, w)`` as the letterboxing pipeline does (crowd and ignored
    boxes left out, as the losses leave them out).

    Reads the annotations without decoding images for the file readers (:class:`DetectionDataset`) and
    renders the synthetic shapes without augmentation (cached when the data set caches); any other data set
    is read item by item through its own transforms. ``dataset`` may be wrapped in ``Subset`` / ``Mosaic``.
    """
    from detforge.data.base import DetectionDataset
    from detforge.data.datamodule import _base_dataset
    from detforge.targets import training_mask

    base = _base_dataset(dataset)
    n = len(base) if max_images is None else min(len(base), int(max_images))
    sizes: list[Tensor] = []
    if isinstance(base, DetectionDataset):
        from detforge.io import image_size

        for i in range(n):
            lo, hi = base._offsets[i], base._offsets[i + 1]
            if hi == lo:
                continue
            keep = ~(base._iscrowd[lo:hi] | base._ignore[lo:hi])  # [n_i]
            boxes = base._boxes[lo:hi][keep]  # [n_i, 4] pixels of the file
            h, w = base._sizes[i]
            if h is None or w is None:
                h, w = image_size(base._paths[i])
            if base.imgsz is not None:  # stretched to imgsz first, then letterboxed
                sy, sx = base.imgsz[0] / h, base.imgsz[1] / w
                boxes = boxes * boxes.new_tensor([sx, sy, sx, sy])
                h, w = base.imgsz
            sizes.append((boxes[:, 2:] - boxes[:, :2]) * (imgsz / max(h, w)))
    else:
        render = getattr(base, "_cached_render", None)
        for i in range(n):
            _, target = render(i) if render is not None else base[i]
            h, w = (int(v) for v in target["size"])
            if render is not None and getattr(base, "imgsz", None) is not None:  # resized after rendering
                th, tw = base.imgsz
                boxes = target["boxes"] * torch.tensor([tw / w, th / h, tw / w, th / h])
                h, w = th, tw
            else:
                boxes = target["boxes"]
            boxes = boxes[training_mask(target)].float()
            sizes.append((boxes[:, 2:] - boxes[:, :2]) * (imgsz / max(h, w)))
    return torch.cat(sizes) if sizes else torch.zeros(0, 2)
