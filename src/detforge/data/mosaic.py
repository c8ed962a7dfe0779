"""``Mosaic``: a data set wrapper that tiles four samples into one training image (YOLOv4/YOLOX style).

Four images (the requested one and three random others), each resized to fit ``imgsz``, are placed around a
random centre on a ``2 * imgsz`` grey canvas; the output is the central ``imgsz x imgsz`` window of that canvas.
Boxes move with their tiles and are clipped to the window; boxes left under 1 pixel wide or high are removed
with their per-box entries (``labels``, ``iscrowd``, ``ignore``, ``area``, ``track_ids``), and crowd / ignore flags
of the rest are kept. The mosaic is a uint8 image handed to ``transforms`` (usually ``build_train_transforms``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from detforge.data.transforms import PAD_VALUE, PER_BOX_KEYS, as_detection_transform

__all__ = ["Mosaic", "keep_uint8"]


def keep_uint8(image: Tensor, target: dict) -> tuple[Tensor, dict]:
    """Pass-through ``transforms`` for a data set wrapped by :class:`Mosaic`: keeps its images uint8, which
    saves a float conversion per tile."""
    return image, target


def _to_uint8(image: Tensor) -> Tensor:
    """Tensor[C, H, W] uint8 or float in [0, 1] -> uint8."""
    if image.dtype == torch.uint8:
        return image
    return image.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)


class Mosaic(Dataset):
    """Wrap ``dataset`` so that ``mosaic[i]`` is, with probability ``prob``, a 4-image mosaic around sample ``i``.

    Args:
        dataset: map-style data set returning ``(image Tensor[C, H, W], target)``; images may be uint8 or
            float in [0, 1]. Give it no augmentation of its own (the mosaic's ``transforms`` do that); for
            speed build it with ``transforms=keep_uint8``.
        imgsz: side of the output image in pixels (and of each tile's fitted size).
        prob: probability of building a mosaic; otherwise the sample is only fitted to ``imgsz``.
        seed: None draws the random choices from torch's generator, which the DataLoader seeds per worker
            and per epoch (the usual choice for training); an int makes sample ``i`` the same mosaic every time.
        transforms: applied to ``(uint8 image Tensor[C, imgsz, imgsz], target)`` after tiling; without it the
            image is returned as float32 in [0, 1].
    """

    def __init__(
        self,
        dataset: Dataset,
        imgsz: int,
        prob: float = 1.0,
        seed: int | None = None,
        transforms: Callable | None = None,
    ) -> None:
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"prob must be in [0, 1], got {prob}")
        if imgsz < 8:
            raise ValueError(f"imgsz must be >= 8, got {imgsz}")
        if len(dataset) == 0:
            raise ValueError("Mosaic needs a non-empty data set")
        self.dataset = dataset
        self.imgsz = int(imgsz)
        self.prob = float(prob)
        self.seed = seed
        self.transforms = as_detection_transform(transforms)  # a raw v2 pipeline moves the boxes too

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str):
        # Data set metadata (num_classes, class_names, in_chans, ...) reads through to the wrapped data set.
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def _uniform(self, generator: np.random.Generator | None, size: int) -> np.ndarray:
        if generator is not None:
            return generator.random(size)
        return torch.rand(size, dtype=torch.float64).numpy()

    def _tile(self, index: int) -> tuple[Tensor, dict]:
        """Sample ``index`` as uint8, resized so its longer side is ``imgsz`` (boxes scaled with it)."""
        image, target = self.dataset[index]
        image = _to_uint8(image)
        height, width = image.shape[-2:]
        scale = self.imgsz / max(height, width)
        if scale != 1.0:
            new_h, new_w = max(round(height * scale), 1), max(round(width * scale), 1)
            image = TF.resize(image, [new_h, new_w], antialias=True)  # [C, new_h, new_w]
            sx, sy = new_w / width, new_h / height
            target = dict(target)
            target["boxes"] = target["boxes"] * torch.tensor([sx, sy, sx, sy])
            if isinstance(target.get("area"), Tensor):
                target["area"] = target["area"] * (sx * sy)
        return image, target

    def __getitem__(self, index: int) -> tuple[Tensor, dict]:
        generator = None if self.seed is None else np.random.default_rng([self.seed, index])
        draws = self._uniform(generator, 6)
        s = self.imgsz
        if draws[0] >= self.prob:
            image, target = self._tile(index)
            image, target = self._place([(image, target, 0, 0)], s, image.shape[0], index, target)
        else:
            others = (draws[3:6] * len(self.dataset)).astype(np.int64).clip(0, len(self.dataset) - 1)
            tiles = [self._tile(i) for i in (index, *others.tolist())]
            channels = tiles[0][0].shape[0]
            if any(t[0].shape[0] != channels for t in tiles):
                raise ValueError(
                    f"Mosaic: samples {index} and {others.tolist()} have different channel counts"
                )
            # Mosaic centre on the 2s x 2s canvas, inside its middle half; output window is [s/2, 3s/2)².
            xc, yc = (s * (0.5 + draws[1:3])).astype(int).tolist()
            placed = []
            for k, (image, target) in enumerate(tiles):
                h, w = image.shape[-2:]
                left = (
                    xc - w if k in (0, 2) else xc
                )  # 0: top-left, 1: top-right, 2: bottom-left, 3: bottom-right
                top = yc - h if k in (0, 1) else yc
                placed.append((image, target, left - s // 2, top - s // 2))
            image, target = self._place(placed, s, channels, index, tiles[0][1])
        if self.transforms is not None:
            return self.transforms(image, target)
        return image.float().div_(255.0), target

    def _place(
        self, placed: list[tuple[Tensor, dict, int, int]], s: int, channels: int, index: int, first: dict
    ) -> tuple[Tensor, dict]:
        """Paste each ``(image, target, left, top)`` onto an ``s x s`` grey canvas; clip and merge boxes."""
        canvas = torch.full((channels, s, s), PAD_VALUE, dtype=torch.uint8)  # [C, s, s]
        parts: list[dict] = []
        for image, target, left, top in placed:
            h, w = image.shape[-2:]
            x0, y0, x1, y1 = max(left, 0), max(top, 0), min(left + w, s), min(top + h, s)
            if x0 >= x1 or y0 >= y1:
                continue
            canvas[:, y0:y1, x0:x1] = image[:, y0 - top : y1 - top, x0 - left : x1 - left]
            boxes = target["boxes"].reshape(-1, 4) + torch.tensor([left, top, left, top], dtype=torch.float32)
            clipped = boxes.clone()
            clipped[:, 0::2] = clipped[:, 0::2].clamp(x0, x1)
            clipped[:, 1::2] = clipped[:, 1::2].clamp(y0, y1)
            keep = ((clipped[:, 2] - clipped[:, 0]) >= 1) & ((clipped[:, 3] - clipped[:, 1]) >= 1)  # [N]
            part = {"boxes": clipped[keep]}
            for key in PER_BOX_KEYS:
                value = target.get(key)
                if isinstance(value, Tensor):
                    part[key] = value[keep]
            if "area" in part:
                # An object loses area in proportion to its box being clipped.
                full = _area(boxes[keep]).clamp(min=1e-6)
                part["area"] = part["area"] * (_area(clipped[keep]) / full)
            parts.append(part)
        merged: dict = {key: value for key, value in first.items() if key not in PER_BOX_KEYS}
        merged["boxes"] = torch.cat([p["boxes"] for p in parts]) if parts else torch.zeros(0, 4)
        for key in PER_BOX_KEYS:
            if parts and all(key in p for p in parts):
                merged[key] = torch.cat([p[key] for p in parts])
            else:
                merged.pop(key, None)
        if "labels" not in merged:
            merged["labels"] = torch.zeros(0, dtype=torch.int64)
        merged["image_id"] = first.get("image_id", index)
        merged["orig_size"] = torch.tensor([s, s], dtype=torch.int64)
        merged["size"] = torch.tensor([s, s], dtype=torch.int64)
        return canvas, merged


def _area(boxes: Tensor) -> Tensor:
    """Areas of xyxy ``boxes`` (Tensor[N, 4]) -> Tensor[N]."""
    return (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
