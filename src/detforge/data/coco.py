"""COCO-format detection datasets (``instances_*.json`` + an image folder).

Category ids (COCO's 1..90 with gaps, or any ids) are remapped to contiguous labels 0..K-1 in ascending id
order; ``label_to_cat_id`` / ``cat_id_to_label`` keep the mapping both ways so results go back in the file's
ids. ``iscrowd`` regions (and ``ignore``, where a file sets it) stay in the target as flags: evaluation
needs them, training drops them. Images without annotations are kept as empty samples.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import numpy as np
from torch import Tensor

from detforge.boxes import convert_boxes
from detforge.data.base import Annotation, DetectionDataset, Record
from detforge.data.checks import IssueLog, looks_normalized, validate_boxes
from detforge.data.deprecation import renamed_kwargs
from detforge.errors import DataError, MissingFileError
from detforge.io import ImageMode, image_size

__all__ = ["CocoDataset", "load_coco_json", "parse_coco"]


def load_coco_json(ann_file: str | os.PathLike) -> dict[str, Any]:
    """Read a COCO annotation file; a missing, truncated or non-object file raises naming it."""
    ann_file = os.fspath(ann_file)
    try:
        with open(ann_file, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise MissingFileError(f"COCO annotation file not found: {ann_file}") from None
    except json.JSONDecodeError as err:
        raise DataError(
            f"{ann_file}: not valid JSON (line {err.lineno}, column {err.colno}: {err.msg}); "
            "is the file truncated?"
        ) from None
    except UnicodeDecodeError as err:
        raise DataError(f"{ann_file}: not a UTF-8 JSON file ({err})") from None
    if not isinstance(data, dict):
        raise DataError(f"{ann_file}: expected a JSON object with 'images' and 'categories'")
    for key in ("images", "categories"):
        if key not in data:
            raise DataError(
                f"{ann_file}: missing top-level key {key!r} (a COCO file has images, annotations, categories)"
            )
        if not isinstance(data[key], list):
            raise DataError(f"{ann_file}: {key!r} must be a list, got {type(data[key]).__name__}")
    if not isinstance(data.get("annotations", []), list):
        raise DataError(f"{ann_file}: 'annotations' must be a list")
    return data


def _require(entry: Any, keys: tuple[str, ...], where: str) -> None:
    if not isinstance(entry, dict):
        raise DataError(f"{where}: expected an object, got {type(entry).__name__}")
    missing = [k for k in keys if k not in entry]
    if missing:
        raise DataError(f"{where}: missing key(s) {missing}")


def parse_coco(
    data: dict[str, Any],
    image_dir: str | os.PathLike,
    name: str,
    log: IssueLog,
    check_files: bool = True,
) -> tuple[list[Record], list[int], list[str]]:
    """Turn a loaded COCO dict into records (xyxy pixel boxes, contiguous labels).

    Args:
        data: the loaded JSON (see :func:`load_coco_json`).
        image_dir: the folder ``file_name`` is relative to.
        name: the annotation file's name for messages.
        log: where skipped records are counted.
        check_files: skip (and count) images missing on disk.

    Returns:
        records, the category ids in label order, the class names in label order.

    Raises:
        ValueError: a category or image entry lacks its keys, or ids repeat.
    """
    image_dir = os.fspath(image_dir)
    categories = data["categories"]
    for k, cat in enumerate(categories):
        _require(cat, ("id", "name"), f"{name}: categories[{k}]")
    cat_ids = sorted(int(c["id"]) for c in categories)
    if len(set(cat_ids)) != len(cat_ids):
        raise DataError(f"{name}: categories repeat an id ({cat_ids})")
    names_by_id = {int(c["id"]): str(c["name"]) for c in categories}
    cat_id_to_label = {cid: i for i, cid in enumerate(cat_ids)}

    images = data["images"]
    index_of_image: dict[int, int] = {}
    for k, img in enumerate(images):
        _require(img, ("id", "file_name"), f"{name}: images[{k}]")
        image_id = int(img["id"])
        if image_id in index_of_image:
            raise DataError(
                f"{name}: images[{k}] repeats id {image_id} (first at images[{index_of_image[image_id]}])"
            )
        index_of_image[image_id] = k

    # One pass over annotations into flat arrays; bad records are counted and skipped.
    annotations = data.get("annotations", [])
    ann_where: Callable[[int], str] = lambda a: f"{name}: annotations[{a}]"  # noqa: E731
    rows, img_idx, labels, crowd, ignore, areas, bboxes = [], [], [], [], [], [], []
    for a, ann in enumerate(annotations):
        try:
            image_id, cat_id, bbox = int(ann["image_id"]), int(ann["category_id"]), ann["bbox"]
            box = [float(v) for v in bbox]
            if len(box) != 4:
                raise ValueError
        except (KeyError, TypeError, ValueError):
            log.add("bad_record", f"{ann_where(a)} (needs image_id, category_id and bbox [x, y, w, h])")
            continue
        if image_id not in index_of_image:
            log.add("unknown_image", f"{ann_where(a)} (image_id {image_id})")
            continue
        if cat_id not in cat_id_to_label:
            log.add("unknown_category", f"{ann_where(a)} (category_id {cat_id})")
            continue
        rows.append(a)
        img_idx.append(index_of_image[image_id])
        labels.append(cat_id_to_label[cat_id])
        crowd.append(bool(ann.get("iscrowd", 0)))
        ignore.append(bool(ann.get("ignore", 0)))
        areas.append(float(ann.get("area", box[2] * box[3])))
        bboxes.append(box)
    xywh = np.asarray(bboxes, dtype=np.float64).reshape(-1, 4)
    xyxy = convert_boxes(xywh, "xywh", "xyxy")  # [M, 4]
    rows_a = np.asarray(rows, dtype=np.int64)
    img_a = np.asarray(img_idx, dtype=np.int64)
    labels_a = np.asarray(labels, dtype=np.int64)
    crowd_a = np.asarray(crowd, dtype=bool)
    ignore_a = np.asarray(ignore, dtype=bool)
    area_a = np.asarray(areas, dtype=np.float32)

    order = np.argsort(img_a, kind="stable")
    starts = np.searchsorted(img_a[order], np.arange(len(images) + 1))
    records: list[Record] = []
    sizes = []
    for k, img in enumerate(images):
        sel = order[starts[k] : starts[k + 1]]
        path = os.path.join(image_dir, str(img["file_name"]))
        where_img = f"{name}: images[{k}] ({img['file_name']})"
        if check_files and not os.path.isfile(path):
            log.add("missing_image", f"{where_img} -> {path}")
            continue
        height, width = img.get("height"), img.get("width")
        if height is None or width is None:
            try:
                height, width = image_size(path)
            except (FileNotFoundError, ValueError):
                log.add("unreadable_image", where_img)
                continue
        height, width = int(height), int(width)
        if height <= 0 or width <= 0:
            log.add("bad_record", f"{where_img}: image size {height}x{width} (h x w) must be positive")
            continue
        boxes, keep = validate_boxes(
            xyxy[sel], height, width, log, lambda j, sel=sel: ann_where(int(rows_a[sel[j]]))
        )
        records.append(
            Record(
                image_id=int(img["id"]),
                image_path=path,
                boxes=boxes[keep],
                labels=labels_a[sel][keep],
                height=height,
                width=width,
                iscrowd=crowd_a[sel][keep],
                ignore=ignore_a[sel][keep],
                area=area_a[sel][keep],
                source=where_img,
            )
        )
        sizes.append((height, width))
    if looks_normalized(xyxy, np.asarray(sizes)):
        log.add(
            "normalized_coords", f"{name}: every bbox value is <= 1; COCO bboxes are [x, y, w, h] in pixels"
        )
    return records, cat_ids, [names_by_id[c] for c in cat_ids]


class CocoDataset(DetectionDataset):
    """Images and boxes from a COCO annotation file.

    Args:
        image_dir: the folder the images' ``file_name`` is relative to.
        ann_file: the ``instances_*.json`` file.
        imgsz: ``(H, W)`` (or an int for a square) to resize to (boxes scale with it); None keeps each file's
            size. ``target_size=`` is its deprecated name.
        transforms: ``transforms(image_uint8, target) -> (image, target)``; see :class:`DetectionDataset`.
        mode: ``"RGB"`` or ``"L"``.

    Attributes:
        label_to_cat_id: ``list[int]``, the file's category id of each label.
        cat_id_to_label: ``dict[int, int]``, the label of each category id.
        skipped: counts of the records skipped while reading, by reason.
    """

    @renamed_kwargs(target_size="imgsz")
    def __init__(
        self,
        image_dir: str | os.PathLike,
        ann_file: str | os.PathLike,
        imgsz: int | tuple[int, int] | None = None,
        transforms: Callable | None = None,
        mode: ImageMode = "RGB",
    ) -> None:
        self.ann_file = os.fspath(ann_file)
        self.image_dir = os.fspath(image_dir)
        name = os.path.basename(self.ann_file)
        log = IssueLog(self.ann_file)
        data = load_coco_json(self.ann_file)
        records, cat_ids, class_names = parse_coco(data, self.image_dir, name, log)
        self.label_to_cat_id = cat_ids
        self.cat_id_to_label = {c: i for i, c in enumerate(cat_ids)}
        super().__init__(records, class_names, imgsz, transforms, mode, issues=log)
        log.warn(stacklevel=3)

    def get(self, index: int) -> tuple[Tensor, list[Annotation]]:
        """Seed API: ``(image Tensor[C, H, W] float in [0, 1], annotations)`` with each annotation's ``bbox``
        ``[x1, y1, x2, y2]`` normalized to [0, 1] and ``category_id`` the 0-indexed label."""
        image, _ = self[index]
        return image, self.annotations(index)
