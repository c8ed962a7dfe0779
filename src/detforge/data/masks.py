"""Images with instance-id masks (0 = background, 1..N = instances) turned into boxes.

The default layout is Penn-Fudan's: ``ROOT/PNGImages/<name>.png`` with ``ROOT/PedMasks/<name>_mask.png``.
Masks are read once when the dataset is built; each instance's box is the tight box around its pixels in
continuous coordinates (a one-pixel instance at column 3 spans x 3..4).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.ops import masks_to_boxes

from detforge.data.base import DetectionDataset, Record
from detforge.data.checks import IssueLog
from detforge.data.deprecation import renamed_kwargs
from detforge.errors import InvalidValueError, MissingFileError
from detforge.io import ImageMode, image_size

__all__ = ["MaskDataset", "instance_boxes"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def instance_boxes(mask: np.ndarray) -> np.ndarray:
    """Tight xyxy boxes (``[N, 4]`` float32, continuous pixels) of the instances 1..N of an id ``mask`` (``[H, W]``),
    in increasing id order."""
    ids = np.unique(mask)
    ids = ids[ids != 0]
    if len(ids) == 0:
        return np.zeros((0, 4), dtype=np.float32)
    masks = torch.from_numpy(mask[None] == ids[:, None, None])  # [N, H, W] bool
    boxes = masks_to_boxes(masks)  # [N, 4], inclusive pixel indices
    boxes[:, 2:] += 1  # pixel indices -> continuous right/bottom edges
    return boxes.numpy().astype(np.float32)


def _find_mask(mask_dir: Path, stem: str, suffix: str) -> Path | None:
    for name in (f"{stem}{suffix}", stem):
        for ext in (".png", ".bmp", ".tif", ".tiff"):
            p = mask_dir / f"{name}{ext}"
            if p.is_file():
                return p
    return None


class MaskDataset(DetectionDataset):
    """Boxes from instance-id masks.

    Args:
        root: the dataset folder.
        image_dir: images, relative to ``root`` (Penn-Fudan: ``PNGImages``).
        mask_dir: masks, relative to ``root`` (Penn-Fudan: ``PedMasks``); a mask is named like its image,
            with ``mask_suffix`` appended to the stem or without it.
        mask_suffix: see ``mask_dir``.
        class_names: the one class every instance belongs to, as a one-element list.
        imgsz, transforms, mode: see :class:`DetectionDataset` (``target_size=`` is imgsz's deprecated name).
    """

    @renamed_kwargs(target_size="imgsz")
    def __init__(
        self,
        root: str | os.PathLike,
        image_dir: str = "PNGImages",
        mask_dir: str = "PedMasks",
        mask_suffix: str = "_mask",
        class_names: Sequence[str] = ("object",),
        imgsz: int | tuple[int, int] | None = None,
        transforms: Callable | None = None,
        mode: ImageMode = "RGB",
    ) -> None:
        self.root = os.fspath(root)
        images_path, masks_path = Path(self.root) / image_dir, Path(self.root) / mask_dir
        for p in (images_path, masks_path):
            if not p.is_dir():
                raise MissingFileError(
                    f"mask dataset folder not found: {p} (expected {image_dir}/ and {mask_dir}/)"
                )
        if len(class_names) != 1:
            raise InvalidValueError(
                f"MaskDataset has one class; class_names must have one name, got {list(class_names)}"
            )
        log = IssueLog(self.root)
        records = []
        images = sorted(p for p in images_path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        for index, image_path in enumerate(images):
            mask_path = _find_mask(masks_path, image_path.stem, mask_suffix)
            if mask_path is None:
                log.add(
                    "missing_mask", f"{image_path} (no {image_path.stem}{mask_suffix}.png in {masks_path})"
                )
                continue
            try:
                height, width = image_size(image_path)
            except ValueError:
                log.add("unreadable_image", str(image_path))
                continue
            try:
                with Image.open(mask_path) as m:
                    mask = np.asarray(m)
            except (UnidentifiedImageError, OSError):
                log.add("unreadable_image", f"{mask_path} (mask)")
                continue
            if mask.ndim == 3:
                mask = mask[..., 0]
            if mask.shape != (height, width):
                log.add(
                    "size_mismatch",
                    f"{mask_path}: mask {mask.shape[0]}x{mask.shape[1]}, image {height}x{width}",
                )
                continue
            boxes = instance_boxes(mask)
            records.append(
                Record(
                    index,
                    str(image_path),
                    boxes,
                    np.zeros(len(boxes), np.int64),
                    height,
                    width,
                    source=str(mask_path),
                )
            )
        super().__init__(records, list(class_names), imgsz, transforms, mode, issues=log)
        log.warn(stacklevel=3)
