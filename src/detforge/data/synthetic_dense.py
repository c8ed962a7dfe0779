"""``SyntheticDense``: crowded scenes of many small objects in large images (``synthetic-dense[:N]``).

The yardstick for small-object work (sliced training and inference, multi-scale training): every image is
512 to 1024 px on each side (the two sides drawn separately) and shows 20 to 80 objects of 6 to 40 px (longer
side), the shape types of :class:`~detforge.data.synthetic.SyntheticShapes` (class ``i`` is
``SHAPE_NAMES[i]``), most of them in a few clusters where they touch and overlap, on a textured background
(a coarse colour field, finer blotches, a linear gradient and grain). Sample ``i`` depends only on
``(seed, i)``.

Boxes are the tight xyxy boxes of the visible pixels. A shape is placed only where it hides at most
``max_occlusion`` of every earlier shape and keeps at least ``1 - max_occlusion`` of itself inside the image;
else it is moved (within its cluster), and after a few tries left out of the image, never just out of the
targets, so every box is a training target. ``area`` is the visible pixel count.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from detforge.data.synthetic import _NO_ROTATION, SHAPE_NAMES, _Shape, _shape_mask, _upsample
from detforge.data.transforms import as_detection_transform

__all__ = ["SyntheticDense"]

_PLACEMENT_TRIES = 4


class SyntheticDense(Dataset):
    """Crowded small-object scenes; ``dataset[i] -> (image Tensor[3, H_i, W_i], target dict)``.

    Args:
        num_images: number of samples.
        num_classes: shape types to use (class ``i`` is ``SHAPE_NAMES[i]``), 1 to 8.
        seed: base seed; sample ``i`` depends on ``(seed, i)`` only.
        image_size_range: ``(lo, hi)`` pixels; each side of each image is drawn in it separately.
        objects_range: ``(lo, hi)`` objects drawn per image (a few may be left out when there is no room).
        object_size_range: ``(lo, hi)`` longer side of an object, pixels (log-uniform).
        clustered: fraction of the objects placed in clusters (the rest anywhere).
        max_occlusion: largest hidden fraction of a shape.
        noise: standard deviation of the per-pixel noise, uint8 grey levels.
        imgsz: optional ``(h, w)`` (or int) to resize the image and boxes to, as the file readers' ``imgsz``.
        transforms: optional ``transforms(image_uint8 Tensor[3, H, W], target) -> (image, target)``; without
            it the image is returned as float32 in [0, 1].
        cache: keep each rendered uint8 image and target in memory (per process), about ``H * W * 3`` bytes
            per image; worth it when every image is read several times per epoch (sliced training).

    The target has ``boxes`` (float32 [N, 4] xyxy pixels), ``labels`` (int64 [N]), ``image_id``,
    ``orig_size``, ``size``, ``iscrowd`` and ``ignore`` (bool [N], all False) and ``area`` (float32 [N]).
    """

    in_chans = 3

    def __init__(
        self,
        num_images: int = 256,
        num_classes: int = 5,
        seed: int = 0,
        *,
        image_size_range: tuple[int, int] = (512, 1024),
        objects_range: tuple[int, int] = (20, 80),
        object_size_range: tuple[float, float] = (6.0, 40.0),
        clustered: float = 0.85,
        max_occlusion: float = 0.5,
        noise: float = 6.0,
        imgsz: int | tuple[int, int] | None = None,
        transforms: Callable | None = None,
        cache: bool = False,
    ) -> None:
        if num_images < 0:
            raise ValueError(f"num_images must be >= 0, got {num_images}")
        if not 1 <= num_classes <= len(SHAPE_NAMES):
            raise ValueError(f"num_classes must be in 1..{len(SHAPE_NAMES)}, got {num_classes}")
        if not 32 <= image_size_range[0] <= image_size_range[1]:
            raise ValueError(f"image_size_range must be (lo, hi) with 32 <= lo <= hi, got {image_size_range}")
        if not 1 <= objects_range[0] <= objects_range[1]:
            raise ValueError(f"objects_range must be (lo, hi) with 1 <= lo <= hi, got {objects_range}")
        if not 3 <= object_size_range[0] <= object_size_range[1] <= image_size_range[0] / 2:
            raise ValueError(
                f"object_size_range must be (lo, hi) with 3 <= lo <= hi <= image_size_range[0] / 2, "
                f"got {object_size_range}"
            )
        if not 0 <= clustered <= 1:
            raise ValueError(f"clustered is a fraction in [0, 1], got {clustered}")
        if not 0 <= max_occlusion < 1:
            raise ValueError(f"max_occlusion must be in [0, 1), got {max_occlusion}")
        self.num_images = int(num_images)
        self.num_classes = int(num_classes)
        self.class_names = list(SHAPE_NAMES[: self.num_classes])
        self.seed = int(seed)
        self.image_size_range = (int(image_size_range[0]), int(image_size_range[1]))
        self.objects_range = (int(objects_range[0]), int(objects_range[1]))
        self.object_size_range = (float(object_size_range[0]), float(object_size_range[1]))
        self.clustered = float(clustered)
        self.max_occlusion = float(max_occlusion)
        self.noise = float(noise)
        amplitude = self.noise * np.sqrt(3.0)  # uniform on [-a, a] has standard deviation a / sqrt(3)
        self._noise_table = np.round(np.linspace(-amplitude, amplitude, 256)).astype(np.int16)
        if imgsz is not None:
            imgsz = (int(imgsz), int(imgsz)) if isinstance(imgsz, int) else (int(imgsz[0]), int(imgsz[1]))
        self.imgsz: tuple[int, int] | None = imgsz
        self.transforms = as_detection_transform(transforms)
        self.cache = bool(cache)
        self._renders: dict[int, tuple[Tensor, dict]] = {}

    def __len__(self) -> int:
        return self.num_images

    def __repr__(self) -> str:
        return (
            f"SyntheticDense(num_images={self.num_images}, num_classes={self.num_classes}, seed={self.seed}, "
            f"image_size_range={self.image_size_range}, objects_range={self.objects_range})"
        )

    # ------------------------------------------------------------------ sampling
    def image_size(self, index: int) -> tuple[int, int]:
        """``(h, w)`` of sample ``index`` (cheap: no rendering)."""
        lo, hi = self.image_size_range
        h, w = np.random.default_rng([self.seed, 4, index]).integers(lo, hi + 1, size=2)
        return int(h), int(w)

    def _background(self, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
        """uint8 [H, W, 3]: coarse colour field + finer blotches + grain + a linear gradient, built at a
        quarter of the resolution and upsampled bilinearly (the per-pixel noise adds the finest texture)."""
        h, w = max(height // 4, 2), max(width // 4, 2)
        coarse = rng.uniform(40, 215, size=(4, 4, 3)).astype(np.float32)  # [4, 4, 3]
        fine = _upsample(coarse, 16, 16) + rng.uniform(-22, 22, size=(16, 16, 3)).astype(np.float32)
        grain = rng.uniform(-10, 10, size=(max(h // 3, 2), max(w // 3, 2), 1)).astype(np.float32)  # ~12 px
        angle = rng.uniform(0, 2 * np.pi)
        ys = (np.arange(h, dtype=np.float32) / h - 0.5)[:, None, None]  # [h, 1, 1]
        xs = (np.arange(w, dtype=np.float32) / w - 0.5)[None, :, None]  # [1, w, 1]
        ramp = (np.cos(angle) * xs + np.sin(angle) * ys) * np.float32(rng.uniform(-50, 50))  # [h, w, 1]
        field = _upsample(fine, h, w) + _upsample(grain, h, w) + ramp  # [h, w, 3]
        small = Image.fromarray(np.clip(field, 0, 255).astype(np.uint8))  # PIL's uint8 resize is the fastest
        return np.asarray(small.resize((width, height), Image.BILINEAR))  # [H, W, 3] uint8 (read-only)

    def _sample_shapes(
        self, rng: np.random.Generator, clusters: np.ndarray, spread: np.ndarray, height: int, width: int
    ) -> list[tuple[int, _Shape]]:
        """``(cluster, shape)`` pairs; cluster -1 places the shape anywhere."""
        count = int(rng.integers(self.objects_range[0], self.objects_range[1] + 1))
        lo, hi = self.object_size_range
        shapes = []
        for _ in range(count):
            label = int(rng.integers(self.num_classes))
            name = SHAPE_NAMES[label]
            size = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))  # longer side
            aspect = 1.0 if name in ("circle", "ring") else float(rng.uniform(0.5, 1.0))
            rx, ry = size / 2, size / 2 * aspect
            if rng.random() < 0.5:
                rx, ry = ry, rx
            angle = 0.0 if name in _NO_ROTATION else float(rng.uniform(-np.pi, np.pi))
            cluster = int(rng.integers(len(clusters))) if rng.random() < self.clustered else -1
            cx, cy = self._centre(rng, clusters, spread, cluster, height, width)
            color = tuple(float(c) for c in rng.uniform(0, 255, size=3))
            shapes.append((cluster, _Shape(label, cx, cy, rx, ry, angle, color, float(rng.uniform(-30, 30)))))
        return shapes

    @staticmethod
    def _centre(
        rng: np.random.Generator,
        clusters: np.ndarray,
        spread: np.ndarray,
        cluster: int,
        height: int,
        width: int,
    ) -> tuple[float, float]:
        """A centre anywhere (``cluster < 0``) or Gaussian around ``clusters[cluster]`` (float [K, 2] xy)."""
        if cluster < 0:
            return float(rng.uniform(0, width)), float(rng.uniform(0, height))
        cx, cy = clusters[cluster] + rng.normal(0, spread[cluster], size=2)
        return float(np.clip(cx, 0, width - 1)), float(np.clip(cy, 0, height - 1))

    # ------------------------------------------------------------------ rendering
    def render(self, index: int) -> tuple[Tensor, dict]:
        """Sample ``index`` as a uint8 image Tensor[3, H, W] at its drawn size and its target."""
        if not 0 <= index < self.num_images:
            raise IndexError(f"SyntheticDense index {index} out of range for {self.num_images} images")
        height, width = self.image_size(index)
        rng = np.random.default_rng([self.seed, 5, index])
        background = self._background(rng, height, width)
        canvas = background.copy()
        owner = np.full((height, width), -1, dtype=np.int16)  # which drawn shape each pixel shows
        num_clusters = int(rng.integers(2, 7))
        clusters = rng.uniform(
            (0.1 * width, 0.1 * height), (0.9 * width, 0.9 * height), size=(num_clusters, 2)
        )
        spread = rng.uniform(12, 45, size=num_clusters)  # [K] cluster radius, pixels
        keep = 1.0 - self.max_occlusion
        labels: list[int] = []
        windows: list[tuple[int, int, int, int]] = []
        full_area: list[int] = []
        visible = np.zeros(0, dtype=np.int64)  # [K] visible pixels of each drawn shape so far
        for cluster, shape in self._sample_shapes(rng, clusters, spread, height, width):
            for _ in range(_PLACEMENT_TRIES):
                window, mask, area = _shape_mask(shape, height, width)
                y0, y1, x0, x1 = window
                covered = owner[y0:y1, x0:x1][mask]
                hidden = np.bincount(covered[covered >= 0], minlength=len(labels))  # [K]
                own = int(mask.sum())
                ok = own > 0 and own >= keep * max(area, 1)
                if ok and labels:
                    ok = bool(np.all(visible - hidden >= keep * np.asarray(full_area)))
                if ok:
                    break
                cx, cy = self._centre(rng, clusters, spread, cluster, height, width)
                shape = _Shape(shape.label, cx, cy, shape.rx, shape.ry, shape.angle, shape.color, shape.shade)
            else:
                continue  # no room: left out of the image
            color = _contrasting(
                rng, background[min(int(shape.cy), height - 1), min(int(shape.cx), width - 1)]
            )
            owner[y0:y1, x0:x1][mask] = len(labels)
            ramp = (np.arange(x0, x1, dtype=np.float32)[None, :] - shape.cx) / max(shape.rx, 1.0)  # [1, w]
            shaded = color + (shape.shade * ramp)[..., None].repeat(mask.shape[0], 0)[mask]  # [M, 3]
            canvas[y0:y1, x0:x1][mask] = np.clip(shaded, 0, 255)
            labels.append(shape.label)
            windows.append(window)
            full_area.append(max(area, own))
            visible = np.append(visible - hidden, own)
        if self.noise > 0:
            noise = self._noise_table[np.frombuffer(rng.bytes(canvas.size), dtype=np.uint8)]
            noisy = canvas.astype(np.int16) + noise.reshape(canvas.shape)
            canvas = np.clip(noisy, 0, 255, out=noisy).astype(np.uint8)
        boxes = np.zeros((len(labels), 4), dtype=np.float32)
        counts = np.zeros(len(labels), dtype=np.float32)
        for slot, (y0, y1, x0, x1) in enumerate(windows):
            mine = owner[y0:y1, x0:x1] == slot  # [h, w] visible pixels of this shape
            rows, cols = np.flatnonzero(mine.any(axis=1)), np.flatnonzero(mine.any(axis=0))
            if len(rows):
                boxes[slot] = (x0 + cols[0], y0 + rows[0], x0 + cols[-1] + 1, y0 + rows[-1] + 1)
                counts[slot] = np.count_nonzero(mine)
        present = counts > 0
        n = int(present.sum())
        target = {
            "boxes": torch.from_numpy(boxes[present]).reshape(-1, 4),
            "labels": torch.as_tensor(labels, dtype=torch.int64).reshape(-1)[torch.from_numpy(present)],
            "image_id": int(index),
            "orig_size": torch.tensor([height, width], dtype=torch.int64),
            "size": torch.tensor([height, width], dtype=torch.int64),
            "iscrowd": torch.zeros(n, dtype=torch.bool),
            "ignore": torch.zeros(n, dtype=torch.bool),
            "area": torch.from_numpy(counts[present]),
        }
        return torch.from_numpy(canvas).permute(2, 0, 1).contiguous(), target  # [3, H, W] uint8

    def __getitem__(self, index: int) -> tuple[Tensor, dict]:
        if index < 0:
            index += self.num_images
        if self.cache:
            if index not in self._renders:
                self._renders[index] = self.render(index)
            image, target = self._renders[index]
            target = {k: v.clone() if isinstance(v, Tensor) else v for k, v in target.items()}
        else:
            image, target = self.render(index)
        height, width = image.shape[-2:]
        if self.imgsz is not None and tuple(self.imgsz) != (height, width):
            th, tw = self.imgsz
            sx, sy = tw / width, th / height
            image = TF.resize(image, [th, tw], antialias=True)  # [3, th, tw] uint8
            target["boxes"] = target["boxes"] * torch.tensor([sx, sy, sx, sy])
            target["area"] = target["area"] * (sx * sy)
            target["size"] = torch.tensor([th, tw], dtype=torch.int64)
        if self.transforms is not None:
            return self.transforms(image, target)
        return image.float().div_(255.0), target


def _contrasting(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """A random colour (float32 [3]) at least 150 grey levels (L1) away from the background colour ``under``."""
    under = under.astype(np.float32)
    for _ in range(10):
        color = rng.uniform(0, 255, size=3).astype(np.float32)
        if np.abs(color - under).sum() >= 150:
            return color
    return np.where(under > 127, 0.0, 255.0).astype(np.float32)
