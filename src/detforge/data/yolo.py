"""Ultralytics-style YOLO datasets: a ``data.yaml`` naming image folders (or list files) and class names,
with one ``labels/<stem>.txt`` per image holding ``class cx cy w h`` normalized to [0, 1].

A missing or empty label file is an image without objects. A line with more than four coordinates is a
polygon (ultralytics segment labels) and becomes its bounding box.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml

from detforge.boxes import convert_boxes
from detforge.data.base import DetectionDataset, Record
from detforge.data.checks import IssueLog, check_labels, validate_boxes
from detforge.data.deprecation import renamed_kwargs
from detforge.errors import DataError, MissingFileError
from detforge.io import ImageMode, image_size

__all__ = ["YoloDataset", "image_to_label_path", "load_data_yaml"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def load_data_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read ``data.yaml``; a missing file, bad YAML or missing ``names`` raises naming the file."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise MissingFileError(f"YOLO data file not found: {path}") from None
    except yaml.YAMLError as err:
        raise DataError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(data, dict) or "names" not in data:
        raise DataError(f"{path}: expected a mapping with 'names' and 'train' / 'val' entries")
    return data


def _class_names(data: dict[str, Any], path: str) -> list[str]:
    names = data["names"]
    if isinstance(names, dict):
        try:
            names = {int(k): v for k, v in names.items()}
        except ValueError:
            raise DataError(f"{path}: 'names' keys must be class ids 0..N-1, got {list(names)}") from None
        ids = sorted(names)
        if ids != list(range(len(ids))):
            raise DataError(f"{path}: 'names' ids must be 0..{len(ids) - 1}, got {ids}")
        return [str(names[i]) for i in ids]
    if isinstance(names, list):
        return [str(n) for n in names]
    raise DataError(f"{path}: 'names' must be a list or an {{id: name}} mapping")


def image_to_label_path(image_path: str) -> str:
    """``.../images/a/b.jpg`` -> ``.../labels/a/b.txt`` (the last ``images`` folder becomes ``labels``)."""
    parts = Path(image_path).parts
    if "images" in parts:
        i = len(parts) - 1 - parts[::-1].index("images")
        parts = (*parts[:i], "labels", *parts[i + 1 :])
    return str(Path(*parts).with_suffix(".txt"))


def _list_images(entry: str | list, root: Path, yaml_path: str) -> list[str]:
    entries = entry if isinstance(entry, list) else [entry]
    images: list[str] = []
    for e in entries:
        p = Path(e) if Path(e).is_absolute() else root / e
        if p.is_dir():
            images += sorted(str(q) for q in p.rglob("*") if q.suffix.lower() in IMAGE_EXTENSIONS)
        elif p.is_file() and p.suffix == ".txt":
            for line in p.read_text().splitlines():
                if line.strip():
                    q = Path(line.strip())
                    images.append(str(q if q.is_absolute() else (p.parent / q)))
        else:
            raise MissingFileError(f"{yaml_path}: image folder or list {str(p)!r} not found")
    return images


def _parse_label_file(
    path: str, num_classes: int, height: int, width: int, log: IssueLog
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (``[N, 4]`` xyxy pixels) and labels (``[N]``) of one label file; bad lines are counted and skipped."""
    rows, is_box, labels, line_numbers = [], [], [], []
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    for n, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            values = [float(v) for v in fields]
            cls = values[0]
            if cls != int(cls) or len(values) < 5 or (len(values) > 5 and len(values) % 2 == 0):
                raise ValueError
        except (ValueError, OverflowError):
            log.add("bad_record", f"{path}:{n} ({line.strip()[:60]!r}: expected 'class cx cy w h')")
            continue
        coords = np.asarray(values[1:], dtype=np.float64)
        if len(coords) == 4:  # cx cy w h, converted below all at once
            box = tuple(coords)
        else:  # polygon x1 y1 x2 y2 ...
            xs, ys = coords[0::2], coords[1::2]
            box = (xs.min(), ys.min(), xs.max(), ys.max())
        rows.append(box)
        is_box.append(len(coords) == 4)
        labels.append(int(cls))
        line_numbers.append(n)
    norm = np.asarray(rows, dtype=np.float64).reshape(-1, 4)  # [N, 4] normalised cxcywh or polygon xyxy
    is_box_a = np.asarray(is_box, dtype=bool)
    norm[is_box_a] = convert_boxes(norm[is_box_a], "cxcywh", "xyxy")  # [N, 4] normalised xyxy
    boxes = norm * np.array([width, height, width, height], dtype=np.float64)
    labels_a = np.asarray(labels, dtype=np.int64)
    where = lambda j: f"{path}:{line_numbers[j]}"  # noqa: E731
    ok_label = check_labels(labels_a, num_classes, log, where)
    boxes, keep = validate_boxes(boxes, height, width, log, where)
    keep &= ok_label
    return boxes[keep], labels_a[keep]


class YoloDataset(DetectionDataset):
    """An ultralytics-style dataset described by ``data.yaml``.

    Args:
        data_yaml: the yaml file with ``path`` (optional root, relative to the yaml's folder), ``train`` and
            ``val`` (image folders, list files or lists of them, relative to the root) and ``names``.
        split: which entry of the yaml to read, ``"train"``, ``"val"`` or ``"test"``.
        imgsz, transforms, mode: see :class:`DetectionDataset` (``target_size=`` is imgsz's deprecated name).
    """

    @renamed_kwargs(target_size="imgsz")
    def __init__(
        self,
        data_yaml: str | os.PathLike,
        split: Literal["train", "val", "test"] = "train",
        imgsz: int | tuple[int, int] | None = None,
        transforms: Callable | None = None,
        mode: ImageMode = "RGB",
    ) -> None:
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be one of ('train', 'val', 'test'), got {split!r}")
        self.data_yaml = os.fspath(data_yaml)
        data = load_data_yaml(self.data_yaml)
        names = _class_names(data, self.data_yaml)
        if split not in data or data[split] is None:
            raise DataError(f"{self.data_yaml}: no {split!r} entry")
        base = Path(self.data_yaml).parent
        root = base / data["path"] if data.get("path") else base  # an absolute ``path`` replaces ``base``
        log = IssueLog(self.data_yaml)
        records = []
        for index, image_path in enumerate(_list_images(data[split], root, self.data_yaml)):
            try:
                height, width = image_size(image_path)
            except FileNotFoundError:
                log.add("missing_image", image_path)
                continue
            except ValueError:
                log.add("unreadable_image", image_path)
                continue
            label_path = image_to_label_path(image_path)
            if os.path.isfile(label_path):
                boxes, labels = _parse_label_file(label_path, len(names), height, width, log)
            else:
                boxes, labels = np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
            records.append(Record(index, image_path, boxes, labels, height, width, source=label_path))
        super().__init__(records, names, imgsz, transforms, mode, issues=log)
        log.warn(stacklevel=3)
