"""Pascal VOC XML datasets: a VOC tree (``Annotations/``, ``JPEGImages/``, ``ImageSets/Main/``) or a plain
folder of image + ``.xml`` pairs.

VOC corners are 1-based pixel indices; a box covering pixels ``xmin..xmax`` becomes ``[xmin - 1, ymin - 1,
xmax, ymax]`` in continuous pixel coordinates. ``difficult`` objects are kept with ``ignore=True``.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detforge.boxes import voc_to_xyxy, xyxy_to_voc
from detforge.data.base import DetectionDataset, Record
from detforge.data.checks import IssueLog, looks_normalized, validate_boxes
from detforge.data.deprecation import renamed_kwargs
from detforge.errors import DataError, MissingFileError
from detforge.io import ImageMode

__all__ = ["VOCDataset", "VocObject", "find_voc_files", "parse_voc_xml"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


@dataclass
class VocObject:
    name: str
    box: tuple[float, float, float, float]  # xyxy, continuous pixels (already converted from 1-based)
    difficult: bool


@dataclass
class VocAnnotation:
    xml_path: str
    filename: str | None
    height: int
    width: int
    objects: list[VocObject]


def _text(node: ET.Element, tag: str, xml_path: str, where: str) -> str:
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise DataError(f"{xml_path}: {where} has no <{tag}>")
    return child.text.strip()


def parse_voc_xml(xml_path: str) -> VocAnnotation:
    """Parse one VOC annotation file.

    Raises:
        ValueError: not well-formed XML, no ``<size>`` / width / height, or an object without name or
            ``<bndbox>`` corners; the message names the file and the object.
    """
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as err:
        raise DataError(f"{xml_path}: not well-formed XML ({err})") from None
    size = root.find("size")
    if size is None:
        raise DataError(f"{xml_path}: no <size> element (width and height are required)")
    try:
        width = int(float(_text(size, "width", xml_path, "<size>")))
        height = int(float(_text(size, "height", xml_path, "<size>")))
    except ValueError as err:
        raise DataError(str(err) if "has no" in str(err) else f"{xml_path}: <size> is not numeric") from None
    if width <= 0 or height <= 0:
        raise DataError(f"{xml_path}: <size> is {width}x{height}; width and height must be positive")
    filename_node = root.find("filename")
    filename = filename_node.text.strip() if filename_node is not None and filename_node.text else None
    objects = []
    for k, obj in enumerate(root.iter("object")):
        where = f"<object> #{k}"
        name = _text(obj, "name", xml_path, where)
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise DataError(f"{xml_path}: {where} ({name}) has no <bndbox>")
        try:
            x1, y1, x2, y2 = (
                float(_text(bndbox, t, xml_path, where)) for t in ("xmin", "ymin", "xmax", "ymax")
            )
        except ValueError as err:
            raise DataError(
                str(err) if "has no" in str(err) else f"{xml_path}: {where} corners not numeric"
            ) from None
        difficult_node = obj.find("difficult")
        difficult = difficult_node is not None and (difficult_node.text or "0").strip() in ("1", "true")
        box = voc_to_xyxy(np.array([x1, y1, x2, y2], dtype=np.float64))  # [4] continuous xyxy
        objects.append(VocObject(name, tuple(box.tolist()), difficult))
    return VocAnnotation(xml_path, filename, height, width, objects)


def find_voc_files(root: str | os.PathLike, split: str | None = None) -> list[tuple[str, str | None]]:
    """(xml path, image path or None when not found) pairs of a VOC tree or a plain folder.

    In a VOC tree, ``ImageSets/Main/{split}.txt`` selects the images when ``split`` is given and the list
    exists; otherwise every xml under ``Annotations/`` is used. In a plain folder every ``*.xml`` is paired
    with the image of the same stem.
    """
    root_p = Path(root)
    if not root_p.is_dir():
        raise MissingFileError(f"VOC folder not found: {root}")
    if (root_p / "Annotations").is_dir():
        ann_dir, img_dir = root_p / "Annotations", root_p / "JPEGImages"
        list_file = root_p / "ImageSets" / "Main" / f"{split}.txt" if split else None
        if list_file is not None and list_file.is_file():
            stems = [line.split()[0] for line in list_file.read_text().splitlines() if line.strip()]
            xmls = [ann_dir / f"{s}.xml" for s in stems]
        else:
            xmls = sorted(ann_dir.glob("*.xml"))
    else:
        img_dir = root_p
        xmls = sorted(root_p.glob("*.xml"))
    pairs = []
    for xml in xmls:
        image = next(
            (img_dir / f"{xml.stem}{e}" for e in IMAGE_EXTENSIONS if (img_dir / f"{xml.stem}{e}").is_file()),
            None,
        )
        pairs.append((str(xml), str(image) if image is not None else str(img_dir / f"{xml.stem}.jpg")))
    return pairs


def read_voc_records(
    root: str | os.PathLike, split: str | None, class_names: Sequence[str] | None, log: IssueLog
) -> tuple[list[Record], list[str]]:
    """Parse a VOC tree or folder into records; bad xml files and boxes are counted in ``log`` and skipped."""
    parsed: list[tuple[VocAnnotation, str]] = []
    for xml_path, image_path in find_voc_files(root, split):
        if not os.path.isfile(xml_path):
            log.add("bad_record", f"{xml_path} (listed in ImageSets but missing)")
            continue
        try:
            ann = parse_voc_xml(xml_path)
        except ValueError as err:
            log.add("missing_size" if "<size>" in str(err) else "bad_record", str(err))
            continue
        if ann.filename and not os.path.isfile(image_path):
            alt = os.path.join(os.path.dirname(image_path), ann.filename)
            image_path = alt if os.path.isfile(alt) else image_path
        if not os.path.isfile(image_path):
            log.add("missing_image", f"{xml_path} -> {image_path}")
            continue
        parsed.append((ann, image_path))
    if class_names is None:
        class_names = sorted({o.name for ann, _ in parsed for o in ann.objects})
    label_of = {n: i for i, n in enumerate(class_names)}
    records = []
    all_boxes = []
    for index, (ann, image_path) in enumerate(parsed):
        known = [o for o in ann.objects if o.name in label_of]
        for k, o in enumerate(ann.objects):
            if o.name not in label_of:
                log.add("unknown_category", f"{ann.xml_path}: <object> #{k} ({o.name!r})")
        raw = np.asarray([o.box for o in known], dtype=np.float64).reshape(-1, 4)
        all_boxes.append(raw)
        obj_index = [k for k, o in enumerate(ann.objects) if o.name in label_of]
        boxes, keep = validate_boxes(
            raw, ann.height, ann.width, log, lambda j, a=ann, ix=obj_index: f"{a.xml_path}: <object> #{ix[j]}"
        )
        records.append(
            Record(
                image_id=index,
                image_path=image_path,
                boxes=boxes[keep],
                labels=np.asarray([label_of[o.name] for o in known], dtype=np.int64)[keep],
                height=ann.height,
                width=ann.width,
                ignore=np.asarray([o.difficult for o in known], dtype=bool)[keep],
                source=ann.xml_path,
            )
        )
    sizes = np.asarray([(r.height, r.width) for r in records])
    if all_boxes and looks_normalized(xyxy_to_voc(np.concatenate(all_boxes)), sizes):
        log.add("normalized_coords", f"{root}: every <bndbox> value is <= 1; VOC corners are pixels")
    return records, list(class_names)


class VOCDataset(DetectionDataset):
    """Pascal VOC XML annotations.

    Args:
        root: a VOC tree (``Annotations/``, ``JPEGImages/``, optional ``ImageSets/Main/``) or a plain folder
            holding ``name.jpg`` + ``name.xml`` pairs.
        split: the ``ImageSets/Main/{split}.txt`` list to use when it exists (None: every xml).
        class_names: the classes in label order; objects of other names are skipped (counted). None collects
            the names found, sorted.
        imgsz, transforms, mode: see :class:`DetectionDataset` (``target_size=`` is imgsz's deprecated name).
    """

    @renamed_kwargs(target_size="imgsz")
    def __init__(
        self,
        root: str | os.PathLike,
        split: str | None = None,
        class_names: Sequence[str] | None = None,
        imgsz: int | tuple[int, int] | None = None,
        transforms: Callable | None = None,
        mode: ImageMode = "RGB",
    ) -> None:
        self.root = os.fspath(root)
        log = IssueLog(self.root)
        records, names = read_voc_records(self.root, split, class_names, log)
        super().__init__(records, names, imgsz, transforms, mode, issues=log)
        log.warn(stacklevel=3)
