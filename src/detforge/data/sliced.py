"""``SlicedDataset``: train on overlapping tiles of large images, cut on the fly (sliced training).

Every image of the wrapped data set is covered by the tile windows of :func:`detforge.slicing.tile_windows`
(overlapping, the last tile flush with the border, one smaller tile when the image is smaller than the
slice). A box is kept in a tile when at least ``min_area`` of its area lies inside it, clipped to the tile
and shifted to the tile's pixels (its ``area`` scaled by the kept fraction); the other per-box entries
(``labels``, ``iscrowd``, ``ignore``, ...) follow their boxes. Tiles with a kept box are all used; tiles
without are sampled at ``empty_ratio`` empty tiles per non-empty one.

The wrapper's index is ``(image, tile)``: items ``0 .. P-1`` are the P non-empty tiles, the next
``round(empty_ratio * P)`` (at most the number of empty tiles) each pick an empty tile: with ``seed=None``
at random from torch's generator, which the DataLoader seeds per worker and per epoch from its own seeded
generator (so a run repeats, and each epoch sees other empty tiles); with an int seed always the same.

A tile's target has ``image_id`` = the tile's position in the list of all tiles (unique, so a written copy
has one file per tile), ``source_id`` (the image's ``image_id``), ``tile`` (int64 [4] xyxy window in the
image) and ``orig_size`` / ``size`` = the tile's (h, w).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from detforge.data.transforms import PER_BOX_KEYS, as_detection_transform
from detforge.slicing import tile_windows

__all__ = ["SlicedDataset", "crop_target"]


def crop_target(target: dict, window: Tensor, min_area: float) -> dict:
    """``target`` cut to ``window`` (xyxy pixels, Tensor[4]): boxes with at least ``min_area`` of their area
    (and some of it) inside, clipped and shifted to the window; per-box entries filtered with them."""
    boxes = torch.as_tensor(target["boxes"], dtype=torch.float32).reshape(-1, 4)  # [N, 4]
    x0, y0, x1, y1 = window.to(boxes.dtype).tolist()
    clipped = torch.stack(
        [
            boxes[:, 0].clamp(x0, x1),
            boxes[:, 1].clamp(y0, y1),
            boxes[:, 2].clamp(x0, x1),
            boxes[:, 3].clamp(y0, y1),
        ],
        dim=1,
    )  # [N, 4]
    inside = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])  # [N]
    full = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp(min=1e-6)  # [N]
    fraction = inside / full
    keep = (inside > 0) & (fraction >= min_area - 1e-6)  # [N]
    n = boxes.shape[0]
    out = dict(target)
    out["boxes"] = clipped[keep] - clipped.new_tensor([x0, y0, x0, y0])  # [K, 4] tile pixels
    for key in PER_BOX_KEYS:
        value = target.get(key)
        if isinstance(value, Tensor) and value.shape[:1] == (n,):
            out[key] = value[keep]
    if isinstance(target.get("area"), Tensor) and target["area"].shape[:1] == (n,):
        out["area"] = target["area"][keep] * fraction[keep]
    size = torch.tensor([int(y1 - y0), int(x1 - x0)], dtype=torch.int64)
    out["orig_size"], out["size"] = size, size.clone()
    return out


def _layout(dataset: Dataset, index: int) -> tuple[int, int, Tensor]:
    """``(height, width, boxes Tensor[N, 4])`` of sample ``index``, from the annotations when the data set
    has them parsed (file readers without ``imgsz``), else by loading the sample."""
    from detforge.data.base import DetectionDataset

    if isinstance(dataset, DetectionDataset) and dataset.imgsz is None:
        from detforge.io import image_size

        height, width = dataset._sizes[index]
        if height is None or width is None:
            height, width = image_size(dataset.image_path(index))
        lo, hi = dataset._offsets[index], dataset._offsets[index + 1]
        return int(height), int(width), dataset._boxes[lo:hi]
    image, target = dataset[index]
    return int(image.shape[-2]), int(image.shape[-1]), torch.as_tensor(target["boxes"]).reshape(-1, 4)


class SlicedDataset(Dataset):
    """Wrap ``dataset`` so that each item is one tile of one of its images (see the module docstring).

    Args:
        dataset: map-style data set of full images ``(image Tensor[C, H, W], target)``, no augmentation of
            its own (build it with ``transforms=keep_uint8`` for speed).
        slice_size: tile size in pixels, an int (square) or ``(height, width)``.
        overlap: overlap ratio of neighbouring tiles in ``[0, 1)``.
        min_area: smallest fraction of a box's area inside a tile for the box to be kept there, in ``(0, 1]``.
        empty_ratio: empty tiles per non-empty tile (``>= 0``; at most all empty tiles are used).
        seed: None: empty tiles drawn from torch's generator (per worker and epoch); an int: fixed.
        transforms: applied to ``(tile image, tile target)``; without it the image is returned as float32
            in [0, 1].

    Indexing reads every image's size and boxes once (from the parsed annotations of a file reader, else by
    loading each sample).
    """

    def __init__(
        self,
        dataset: Dataset,
        slice_size: int | tuple[int, int],
        overlap: float = 0.2,
        min_area: float = 0.5,
        empty_ratio: float = 0.0,
        seed: int | None = None,
        transforms: Callable | None = None,
    ) -> None:
        if not 0.0 < min_area <= 1.0:
            raise ValueError(f"min_area is a fraction of a box's area in (0, 1], got {min_area}")
        if empty_ratio < 0:
            raise ValueError(f"empty_ratio must be >= 0, got {empty_ratio}")
        self.dataset = dataset
        self.slice_size = slice_size
        self.overlap = float(overlap)
        self.min_area = float(min_area)
        self.empty_ratio = float(empty_ratio)
        self.seed = seed
        self.transforms = as_detection_transform(transforms)
        windows, images, counts = [], [], []
        for index in range(len(dataset)):
            height, width, boxes = _layout(dataset, index)
            tiles = tile_windows(height, width, slice_size, overlap)  # [T, 4] (validates the arguments)
            windows.append(tiles)
            images.append(torch.full((len(tiles),), index, dtype=torch.int64))
            counts.append(_kept_counts(boxes, tiles, self.min_area))
        self.windows = torch.cat(windows) if windows else torch.zeros(0, 4, dtype=torch.int64)  # [T, 4]
        self.image_index = torch.cat(images) if images else torch.zeros(0, dtype=torch.int64)  # [T]
        counts_all = torch.cat(counts) if counts else torch.zeros(0, dtype=torch.int64)  # [T]
        self.nonempty = torch.nonzero(counts_all > 0).flatten()  # [P] tile positions
        self.empty = torch.nonzero(counts_all == 0).flatten()  # [E]
        self.num_empty = min(int(round(self.empty_ratio * len(self.nonempty))), len(self.empty))
        self._fixed_empty = torch.zeros(0, dtype=torch.int64)  # [num_empty] the empty tiles of an int seed
        if self.seed is not None and self.num_empty:
            order = torch.from_numpy(np.random.default_rng([self.seed, 7]).permutation(len(self.empty)))
            self._fixed_empty = self.empty[order[: self.num_empty]]

    def __len__(self) -> int:
        return len(self.nonempty) + self.num_empty

    def __getattr__(self, name: str):
        # Data set metadata (num_classes, class_names, in_chans, ...) reads through to the wrapped data set.
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __repr__(self) -> str:
        return (
            f"SlicedDataset({len(self.nonempty)} non-empty + {self.num_empty} of {len(self.empty)} empty tiles "
            f"of {len(self.dataset)} images, slice_size={self.slice_size}, overlap={self.overlap})"
        )

    def tile_of(self, item: int) -> int:
        """The position (in :attr:`windows`) of the tile item ``item`` shows."""
        if not 0 <= item < len(self):
            raise IndexError(f"SlicedDataset index {item} out of range for {len(self)} tiles")
        if item < len(self.nonempty):
            return int(self.nonempty[item])
        slot = item - len(self.nonempty)
        if self.seed is None:
            return int(self.empty[torch.randint(len(self.empty), ())])
        return int(self._fixed_empty[slot])

    def __getitem__(self, item: int) -> tuple[Tensor, dict]:
        if item < 0:
            item += len(self)
        position = self.tile_of(item)
        window = self.windows[position]  # [4] xyxy
        image, target = self.dataset[int(self.image_index[position])]
        x0, y0, x1, y1 = window.tolist()
        tile = image[:, y0:y1, x0:x1].contiguous()  # [C, h, w]
        target = crop_target(target, window, self.min_area)
        target["source_id"] = target.get("image_id", int(self.image_index[position]))
        target["image_id"] = position
        target["tile"] = window.clone()
        if self.transforms is not None:
            return self.transforms(tile, target)
        if tile.dtype == torch.uint8:
            tile = tile.float().div_(255.0)
        return tile, target


def _kept_counts(boxes: Tensor, windows: Tensor, min_area: float) -> Tensor:
    """Boxes (Tensor[N, 4]) kept by each window (Tensor[T, 4]) under the ``min_area`` rule; int64 [T]."""
    if boxes.numel() == 0:
        return torch.zeros(len(windows), dtype=torch.int64)
    b = boxes.to(torch.float32)[None]  # [1, N, 4]
    w = windows.to(torch.float32)[:, None]  # [T, 1, 4]
    iw = (torch.minimum(b[..., 2], w[..., 2]) - torch.maximum(b[..., 0], w[..., 0])).clamp(min=0)  # [T, N]
    ih = (torch.minimum(b[..., 3], w[..., 3]) - torch.maximum(b[..., 1], w[..., 1])).clamp(min=0)  # [T, N]
    inside = iw * ih
    full = ((b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])).clamp(min=1e-6)  # [1, N]
    return ((inside > 0) & (inside / full >= min_area - 1e-6)).sum(1)
