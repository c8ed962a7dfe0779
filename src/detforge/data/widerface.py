"""WIDER FACE in its standard layout::

    ROOT/WIDER_{split}/images/<event>/<name>.jpg
    ROOT/wider_face_split/wider_face_{split}_bbx_gt.txt

The ground-truth file repeats: an image path line, a face count line, then one line per face
``x y w h blur expression illumination invalid occlusion pose`` (pixels, xywh). An image with no faces has
count 0 followed by a single all-zero line. Faces marked ``invalid`` are kept with ``ignore=True``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
from torch import Tensor

from detforge.boxes import convert_boxes
from detforge.data.base import DetectionDataset, Record
from detforge.data.checks import IssueLog, looks_normalized, validate_boxes
from detforge.data.deprecation import renamed_kwargs
from detforge.errors import DataError, MissingFileError
from detforge.io import ImageMode, image_size

__all__ = ["WiderFaceDataset", "WiderFaceEntry", "parse_wider_gt"]

ATTRIBUTES = ("blur", "expression", "illumination", "invalid", "occlusion", "pose")


@dataclass
class WiderFaceEntry:
    """One image of the ground-truth file.

    Attributes:
        image_path: the image file.
        boxes: ``[N, 4]`` float32 xyxy pixels of the file on disk.
        attributes: ``{name: [N] int64}`` for blur, expression, illumination, invalid, occlusion, pose.
        line: 1-based line of the image path in the ground-truth file.
    """

    image_path: str
    boxes: np.ndarray
    attributes: dict[str, np.ndarray]
    line: int

    def __getattr__(self, name: str) -> np.ndarray:
        if name in ATTRIBUTES:
            return self.attributes[name]
        raise AttributeError(name)


def _is_numeric(line: str) -> bool:
    try:
        return bool(line.split()) and all(float(v) is not None for v in line.split())
    except ValueError:
        return False


def parse_wider_gt(gt_file: str, image_root: str) -> list[WiderFaceEntry]:
    """Parse ``wider_face_{split}_bbx_gt.txt``.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: a count line that is not a number or does not match the face lines that follow; the
            message names the file, the line and the image.
    """
    try:
        with open(gt_file, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise MissingFileError(f"WIDER FACE ground-truth file not found: {gt_file}") from None
    entries = []
    i = 0
    while i < len(lines):
        name = lines[i].strip()
        if not name:
            i += 1
            continue
        image_line = i + 1
        if _is_numeric(name):
            raise DataError(
                f"{gt_file}:{image_line}: expected an image path, got a face line ({name[:60]!r}); the count "
                "line of the image before says fewer faces than follow it"
            )
        if i + 1 >= len(lines):
            raise DataError(f"{gt_file}:{image_line}: {name}: file ends before the face count line")
        try:
            count = int(lines[i + 1].strip())
        except ValueError:
            raise DataError(
                f"{gt_file}:{i + 2}: {name}: expected a face count, got {lines[i + 1].strip()[:60]!r}"
            ) from None
        if count < 0:
            raise DataError(f"{gt_file}:{i + 2}: {name}: negative face count {count}")
        # Zero faces is followed by one all-zero line (tolerated when a writer left it out).
        zero_line_present = i + 2 < len(lines) and _is_numeric(lines[i + 2])
        rows = count if count > 0 or not zero_line_present else 1
        faces = []
        for k in range(rows):
            line_no = i + 3 + k
            fields = lines[i + 2 + k].split() if i + 2 + k < len(lines) else []
            try:
                values = [float(v) for v in fields]
            except ValueError:
                values = []
            if len(values) < 4:
                raise DataError(
                    f"{gt_file}:{line_no}: {name}: count line says {count} face(s) but line {line_no} "
                    f"is not a face line ({' '.join(fields)[:60]!r})"
                )
            faces.append((values + [0.0] * 10)[:10])
        i += 2 + rows
        table = np.asarray(faces if count > 0 else [], dtype=np.float64).reshape(-1, 10)
        boxes = convert_boxes(table[:, :4], "xywh", "xyxy")  # [N, 4] xyxy
        attributes = {a: table[:, 4 + j].astype(np.int64) for j, a in enumerate(ATTRIBUTES)}
        entries.append(WiderFaceEntry(os.path.join(image_root, name), boxes, attributes, image_line))
    return entries


class WiderFaceDataset(DetectionDataset):
    """WIDER FACE faces (one class, ``"face"``).

    Args:
        root: the folder holding ``WIDER_{split}/`` and ``wider_face_split/``.
        split: ``"train"`` or ``"val"``.
        imgsz, transforms, mode: see :class:`DetectionDataset` (``target_size=`` is imgsz's deprecated name).
    """

    @renamed_kwargs(target_size="imgsz")
    def __init__(
        self,
        root: str | os.PathLike,
        split: Literal["train", "val"] = "train",
        imgsz: int | tuple[int, int] | None = None,
        transforms: Callable | None = None,
        mode: ImageMode = "RGB",
    ) -> None:
        if split not in ("train", "val"):
            raise ValueError(f"split must be one of ('train', 'val'), got {split!r}")
        self.root = os.fspath(root)
        self.split = split
        self.gt_file = os.path.join(self.root, "wider_face_split", f"wider_face_{split}_bbx_gt.txt")
        image_root = os.path.join(self.root, f"WIDER_{split}", "images")
        log = IssueLog(self.gt_file)
        entries = parse_wider_gt(self.gt_file, image_root)
        records, self.entries = [], []
        for index, entry in enumerate(entries):
            where_img = f"{self.gt_file}:{entry.line}"
            try:
                height, width = image_size(entry.image_path)
            except FileNotFoundError:
                log.add("missing_image", f"{where_img} -> {entry.image_path}")
                continue
            except ValueError:
                log.add("unreadable_image", f"{where_img} -> {entry.image_path}")
                continue

            def where(j: int, e: WiderFaceEntry = entry) -> str:
                return f"{self.gt_file}:{e.line + 2 + j} ({os.path.basename(e.image_path)} face {j})"

            boxes, keep = validate_boxes(entry.boxes, height, width, log, where)
            entry = WiderFaceEntry(
                entry.image_path, boxes[keep], {a: v[keep] for a, v in entry.attributes.items()}, entry.line
            )
            self.entries.append(entry)
            records.append(
                Record(
                    image_id=index,
                    image_path=entry.image_path,
                    boxes=entry.boxes,
                    labels=np.zeros(len(entry.boxes), dtype=np.int64),
                    height=height,
                    width=width,
                    ignore=entry.attributes["invalid"].astype(bool),
                    source=where_img,
                )
            )
        raw = np.concatenate([e.boxes for e in entries]) if entries else np.zeros((0, 4))
        if looks_normalized(raw, np.asarray([(r.height, r.width) for r in records])):
            log.add(
                "normalized_coords", f"{self.gt_file}: every face coordinate is <= 1; WIDER FACE uses pixels"
            )
        super().__init__(records, ["face"], imgsz, transforms, mode, issues=log)
        log.warn(stacklevel=3)

    def get(self, index: int) -> tuple[Tensor, Tensor]:
        """``(image Tensor[C, H, W] float in [0, 1], face_boxes Tensor[N, 4])``, boxes xyxy pixels of the
        returned (resized) image; ignored faces included."""
        image, target = self[index]
        return image, target["boxes"]

    def get_annotation(self, index: int) -> WiderFaceEntry:
        """The parsed entry: ``image_path``, ``boxes`` (pixels of the file) and per-face attributes."""
        return self.entries[index]
