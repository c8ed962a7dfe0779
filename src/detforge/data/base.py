"""What every file-based dataset reader shares: the parsed :class:`Record` and :class:`DetectionDataset`.

A reader parses its annotation files once into a list of records (boxes already xyxy pixels, validated and
clipped); ``DetectionDataset`` packs them into flat tensors so that ``dataset[i]`` only decodes one image,
slices its boxes and builds the target dict of docs/architecture.md.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from detforge.data.checks import IssueLog
from detforge.data.deprecation import renamed_kwargs, warn_renamed
from detforge.data.transforms import as_detection_transform
from detforge.io import ImageMode, image_size, load_image_uint8, resize_uint8

__all__ = ["Annotation", "DetectionDataset", "Record"]


@dataclass
class Record:
    """One image and its objects, as a reader parsed them.

    Attributes:
        image_id: the id the annotation file gives the image (COCO ``id``; running index elsewhere).
        image_path: where the image file is.
        boxes: ``[N, 4]`` float32 xyxy pixels of the file on disk.
        labels: ``[N]`` int64 contiguous class indices.
        height, width: the image size the annotation states (None when it states none).
        iscrowd: ``[N]`` bool, COCO crowd regions (kept for evaluation, not trained on).
        ignore: ``[N]`` bool, objects to ignore (VOC ``difficult``, WIDER ``invalid``).
        area: ``[N]`` float32 object areas when the file gives them (COCO segmentation area), else None.
        source: names the record in messages, e.g. ``"instances.json: images[17]"``.
    """

    image_id: int
    image_path: str
    boxes: np.ndarray
    labels: np.ndarray
    height: int | None = None
    width: int | None = None
    iscrowd: np.ndarray | None = None
    ignore: np.ndarray | None = None
    area: np.ndarray | None = None
    source: str = ""


@dataclass(frozen=True)
class Annotation:
    """One object in the seed API (``CocoDataset.get``): ``bbox`` is ``[x1, y1, x2, y2]`` normalized to
    [0, 1] by the returned image's size; ``category_id`` is the 0-indexed label."""

    bbox: tuple[float, float, float, float]
    category_id: int
    iscrowd: bool = False


class DetectionDataset(Dataset):
    """A map-style detection dataset over parsed records.

    ``dataset[i] -> (image, target)``: ``image`` is float32 ``Tensor[C, H, W]`` in [0, 1] (C = 3, or 1 with
    ``mode="L"``); ``target`` holds ``boxes`` (``Tensor[N, 4]`` xyxy pixels of the returned image),
    ``labels`` (``Tensor[N]`` int64), ``image_id``, ``orig_size`` and ``size`` (``Tensor[2]`` int64 (h, w)),
    ``iscrowd`` and ``ignore`` (``Tensor[N]`` bool) and ``area`` (``Tensor[N]`` float32).

    Args:
        records: the parsed images (see :class:`Record`).
        class_names: one name per label index.
        imgsz: ``(H, W)`` (or an int for a square) to resize every image to, stretching (boxes scale with it);
            None keeps the file's size. ``target_size=`` is the deprecated name.
        transforms: called as ``transforms(image, target)`` with ``image`` uint8 ``Tensor[C, H, W]``; must
            return ``(image float32 in [0, 1], target)``. None returns the image as float32 / 255. A raw
            torchvision v2 pipeline (``v2.Compose([...])``) is wrapped so it moves the boxes too
            (:func:`detforge.data.transforms.as_detection_transform`).
        mode: ``"RGB"`` or ``"L"`` (single channel, thermal).
        issues: the problems the reader counted while parsing (kept as ``dataset.issues``).
    """

    @renamed_kwargs(target_size="imgsz")
    def __init__(
        self,
        records: Sequence[Record],
        class_names: Sequence[str],
        imgsz: int | tuple[int, int] | None = None,
        transforms: Callable[[Tensor, dict], tuple[Tensor, dict]] | None = None,
        mode: ImageMode = "RGB",
        issues: IssueLog | None = None,
    ) -> None:
        if mode not in ("RGB", "L"):
            raise ValueError(f"mode must be one of ('RGB', 'L'), got {mode!r}")
        if imgsz is not None:
            imgsz = (int(imgsz), int(imgsz)) if isinstance(imgsz, int) else (int(imgsz[0]), int(imgsz[1]))
            if min(imgsz) <= 0:
                raise ValueError(f"imgsz must be positive (H, W), got {imgsz}")
        self.records = list(records)
        self.class_names = [str(n) for n in class_names]
        self.imgsz: tuple[int, int] | None = imgsz
        self.transforms = as_detection_transform(transforms)
        self.mode = mode
        self.issues = issues if issues is not None else IssueLog(type(self).__name__)
        self.image_cache = None  # an ImageCache of decoded images (detforge.data.cache.cache_images)
        self._pack()

    def _pack(self) -> None:
        """Flatten the records' boxes into contiguous tensors indexed by ``_offsets``."""
        records = self.records
        counts = np.fromiter((len(r.labels) for r in records), dtype=np.int64, count=len(records))
        self._offsets = np.concatenate([[0], np.cumsum(counts)]).tolist()

        def cat(get: Callable[[Record], np.ndarray | None], n: int, dtype, default) -> Tensor:
            parts = [np.asarray(default(r) if get(r) is None else get(r), dtype=dtype) for r in records]
            if not parts:
                return torch.zeros((0, n) if n else (0,), dtype=torch.from_numpy(np.zeros(0, dtype)).dtype)
            return torch.from_numpy(np.concatenate(parts).reshape((-1, n) if n else (-1,)))

        zeros_bool = lambda r: np.zeros(len(r.labels), dtype=bool)  # noqa: E731
        self._boxes = cat(lambda r: r.boxes.reshape(-1, 4), 4, np.float32, None)  # [M, 4]
        self._labels = cat(lambda r: r.labels, 0, np.int64, None)  # [M]
        self._iscrowd = cat(lambda r: r.iscrowd, 0, bool, zeros_bool)  # [M]
        self._ignore = cat(lambda r: r.ignore, 0, bool, zeros_bool)  # [M]
        box_area = lambda r: (r.boxes[:, 2] - r.boxes[:, 0]) * (r.boxes[:, 3] - r.boxes[:, 1])  # noqa: E731
        self._area = cat(lambda r: r.area, 0, np.float32, box_area)  # [M]
        self._paths = [r.image_path for r in records]
        self._ids = [int(r.image_id) for r in records]
        self._sizes = [(r.height, r.width) for r in records]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def skipped(self) -> dict[str, int]:
        """Error-level problems the reader counted (records or boxes skipped, ...), by kind; see
        ``detforge.data.checks.ISSUE_KINDS``."""
        return self.issues.skipped

    def __len__(self) -> int:
        return len(self.records)

    def image_path(self, index: int) -> str:
        return self._paths[index]

    def load_image(self, index: int) -> Tensor:
        """The image of record ``index`` as uint8 ``Tensor[C, H, W]``, as on disk (no resize)."""
        return load_image_uint8(self._paths[index], self.mode)

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor | int]]:
        if index < 0:
            index += len(self)
        cached = self.image_cache.get(index) if self.image_cache is not None else None
        image = load_image_uint8(self._paths[index], self.mode) if cached is None else cached  # [C, H, W] uint8
        orig_h, orig_w = int(image.shape[-2]), int(image.shape[-1])
        lo, hi = self._offsets[index], self._offsets[index + 1]
        boxes = self._boxes[lo:hi]  # [N, 4]
        area = self._area[lo:hi]  # [N]
        ann_h, ann_w = self._sizes[index]
        if ann_h is not None and (ann_h, ann_w) != (orig_h, orig_w):
            warnings.warn(
                f"{self._paths[index]}: annotation says {ann_h}x{ann_w} (h x w) but the file is "
                f"{orig_h}x{orig_w}; boxes are clipped to the file (run `detforge doctor`)",
                stacklevel=2,
            )
        h, w = orig_h, orig_w
        if self.imgsz is not None and self.imgsz != (orig_h, orig_w):
            h, w = self.imgsz
            image = resize_uint8(image, h, w)
            sx, sy = w / orig_w, h / orig_h
            boxes = boxes * boxes.new_tensor([sx, sy, sx, sy])
            area = area * (sx * sy)
        else:
            boxes = boxes.clone()
            area = area.clone()
        boxes[:, 0::2].clamp_(0, w)
        boxes[:, 1::2].clamp_(0, h)
        target: dict[str, Tensor | int] = {
            "boxes": boxes,
            "labels": self._labels[lo:hi].clone(),
            "image_id": self._ids[index],
            "orig_size": torch.tensor([orig_h, orig_w], dtype=torch.int64),
            "size": torch.tensor([h, w], dtype=torch.int64),
            "iscrowd": self._iscrowd[lo:hi].clone(),
            "ignore": self._ignore[lo:hi].clone(),
            "area": area,
        }
        target.update(self._extra_target(index))
        if self.transforms is not None:
            return self.transforms(image, target)
        return image.float().div_(255), target

    def _extra_target(self, index: int) -> dict[str, Tensor | int]:
        """Entries a reader adds to record ``index``'s target before the transforms (none here); per-box ones
        must be named in ``detforge.data.transforms.PER_BOX_KEYS`` so the transforms filter them too."""
        return {}

    def annotations(self, index: int) -> list[Annotation]:
        """Record ``index``'s objects normalized to [0, 1] by the image size (the seed ``get`` API)."""
        record = self.records[index]
        h, w = record.height, record.width
        if h is None or w is None:
            h, w = image_size(record.image_path)
        scale = np.array([w, h, w, h], dtype=np.float64)
        iscrowd = record.iscrowd if record.iscrowd is not None else np.zeros(len(record.labels), bool)
        return [
            Annotation(tuple(float(v) for v in box / scale), int(label), bool(crowd))
            for box, label, crowd in zip(record.boxes, record.labels, iscrowd)
        ]

    @property
    def target_size(self) -> tuple[int, int] | None:
        """Deprecated name of :attr:`imgsz`."""
        warn_renamed(type(self).__name__, "target_size", "imgsz", stacklevel=2)
        return self.imgsz

    def __repr__(self) -> str:
        boxes = int(self._boxes.shape[0])
        return (
            f"{type(self).__name__}(images={len(self)}, boxes={boxes}, classes={self.num_classes}, "
            f"imgsz={self.imgsz}, mode={self.mode!r})"
        )
