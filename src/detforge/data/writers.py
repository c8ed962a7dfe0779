"""Write any detforge data set to disk as COCO, Pascal VOC, YOLO-txt or WIDER FACE, in each format's own
conventions.

- COCO: ``OUT/<split>/<id>.png`` + ``OUT/annotations/instances_<split>.json``; boxes ``[x, y, w, h]`` pixels,
  categories with 1-based ids, ``iscrowd``, ``area`` (visible pixels when the data set gives it), an ``ignore``
  flag, and in sequence mode ``track_id`` / ``frame_index`` / ``video_id``.
- VOC: ``OUT/JPEGImages/<split>_<id>.png``, ``OUT/Annotations/<split>_<id>.xml`` (1-based integer corners, ``<size>``,
  ``<difficult>`` = ignore) and ``OUT/ImageSets/Main/<split>.txt``.
- YOLO: ``OUT/images/<split>/<id>.png``, ``OUT/labels/<split>/<id>.txt`` (``class cx cy w h`` normalized) and
  ``OUT/data.yaml`` with ``train``, ``val`` and ``names``. YOLO has no ignore or crowd flag, so such
  boxes are left out, with a warning that counts them.
- WIDER FACE: ``OUT/WIDER_<split>/images/<event>/<name>.png`` + ``OUT/wider_face_split/wider_face_<split>_bbx_gt.txt``
  (image path, face count, then ``x y w h blur expression illumination invalid occlusion pose`` per face, integer
  pixels; an image without faces gets count 0 and one all-zero line). One class: every box is written as a face
  (a warning counts boxes of other classes); ``ignore`` / crowd boxes get ``invalid = 1``.

Images are read from the data set as it returns them (float in [0, 1] or uint8) and saved losslessly as PNG
unless ``image_format="jpg"``; 1-channel images are saved as greyscale.
"""

from __future__ import annotations

import json
import os
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import yaml
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from detforge.boxes import convert_boxes, xyxy_to_voc

__all__ = ["write_coco", "write_voc", "write_widerface", "write_yolo"]

ImageFormat = Literal["png", "jpg"]
_FORMATS = ("png", "jpg")
_MARGIN = 1e-6  # YOLO: normalized distance kept from the image border


def _check(split: str, image_format: str) -> None:
    if image_format not in _FORMATS:
        raise ValueError(f"image_format must be one of {_FORMATS}, got {image_format!r}")
    if not split or any(c in split for c in "/\\:"):
        raise ValueError(f"split must be a plain folder name like 'train' or 'val', got {split!r}")


def _class_names(dataset: Dataset) -> list[str]:
    base = dataset
    while not hasattr(base, "class_names") and hasattr(base, "dataset"):
        base = base.dataset
    names = getattr(base, "class_names", None)
    if names is None:
        raise ValueError(f"{type(dataset).__name__} has no class_names; the writers need one name per label")
    return [str(n) for n in names]


def _samples(dataset: Dataset) -> Iterator[tuple[int, Image.Image, dict]]:
    """Yield ``(index, PIL image, target)`` with the target's boxes as float32 [N, 4] xyxy pixels."""
    for index in range(len(dataset)):
        image, target = dataset[index]
        if not isinstance(image, Tensor) or image.ndim != 3 or image.shape[0] not in (1, 3):
            raise ValueError(f"{type(dataset).__name__}[{index}]: expected an image Tensor[1|3, H, W]")
        if image.dtype != torch.uint8:
            image = image.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)
        array = image.permute(1, 2, 0).numpy()  # [H, W, C]
        pil = Image.fromarray(np.ascontiguousarray(array[..., 0]) if array.shape[-1] == 1 else array)
        yield index, pil, target


def _flag(target: dict, key: str, n: int) -> np.ndarray:
    value = target.get(key)
    if isinstance(value, Tensor) and value.numel() == n:
        return value.bool().numpy()
    return np.zeros(n, dtype=bool)


def _stem(target: dict, index: int) -> str:
    return f"{int(target.get('image_id', index)):06d}"


def _save(pil: Image.Image, path: Path, image_format: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if image_format == "jpg":
        pil.save(path, quality=95)
    else:
        pil.save(path, compress_level=1)


def write_coco(
    dataset: Dataset, out_dir: str | os.PathLike, split: str = "train", image_format: ImageFormat = "png"
) -> Path:
    """Write ``dataset`` as a COCO detection data set; returns the annotation file's path.

    Layout: ``out_dir/<split>/<image_id>.<ext>`` and ``out_dir/annotations/instances_<split>.json``.
    """
    _check(split, image_format)
    out = Path(out_dir)
    names = _class_names(dataset)
    images, annotations = [], []
    for index, pil, target in _samples(dataset):
        stem = _stem(target, index)
        file_name = f"{stem}.{image_format}"
        _save(pil, out / split / file_name, image_format)
        image_id = int(target.get("image_id", index))
        entry = {"id": image_id, "file_name": file_name, "width": pil.width, "height": pil.height}
        if "frame_index" in target:
            entry["frame_index"] = int(target["frame_index"])
            entry["video_id"] = int(target.get("sequence_id", 0))
        images.append(entry)
        boxes = target["boxes"].reshape(-1, 4).double()  # [N, 4] xyxy
        n = boxes.shape[0]
        crowd, ignore = _flag(target, "iscrowd", n), _flag(target, "ignore", n)
        area = target.get("area")
        tracks = target.get("track_ids")
        xywh = convert_boxes(boxes, "xyxy", "xywh")  # [N, 4] float64
        for k in range(n):
            x, y, bw, bh = xywh[k].tolist()
            ann = {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": int(target["labels"][k]) + 1,
                "bbox": [round(x, 3), round(y, 3), round(bw, 3), round(bh, 3)],
                "area": round(float(area[k]) if isinstance(area, Tensor) else bw * bh, 3),
                "iscrowd": int(crowd[k]),
                "ignore": int(ignore[k]),
            }
            if isinstance(tracks, Tensor):
                ann["track_id"] = int(tracks[k])
            annotations.append(ann)
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(names)]
    ann_file = out / "annotations" / f"instances_{split}.json"
    ann_file.parent.mkdir(parents=True, exist_ok=True)
    with open(ann_file, "w", encoding="utf-8") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return ann_file


def write_voc(
    dataset: Dataset, out_dir: str | os.PathLike, split: str = "train", image_format: ImageFormat = "png"
) -> Path:
    """Write ``dataset`` as a Pascal VOC tree; returns ``out_dir``.

    Files are named ``<split>_<image_id>`` since all splits share ``JPEGImages`` and ``Annotations``.

    Corners are 1-based pixel indices: the xyxy box ``[x1, y1, x2, y2]`` becomes ``xmin = round(x1) + 1``,
    ``ymin = round(y1) + 1``, ``xmax = round(x2)``, ``ymax = round(y2)``. ``ignore`` boxes get
    ``<difficult>1</difficult>``; crowd boxes too (VOC has no crowd flag).
    """
    _check(split, image_format)
    out = Path(out_dir)
    names = _class_names(dataset)
    stems = []
    for index, pil, target in _samples(dataset):
        stem = f"{split}_{_stem(target, index)}"  # splits share one image folder, so stems carry the split
        file_name = f"{stem}.{image_format}"
        _save(pil, out / "JPEGImages" / file_name, image_format)
        root = ET.Element("annotation")
        ET.SubElement(root, "folder").text = "JPEGImages"
        ET.SubElement(root, "filename").text = file_name
        size = ET.SubElement(root, "size")
        ET.SubElement(size, "width").text = str(pil.width)
        ET.SubElement(size, "height").text = str(pil.height)
        ET.SubElement(size, "depth").text = str(len(pil.getbands()))
        boxes = target["boxes"].reshape(-1, 4)  # [N, 4]
        n = boxes.shape[0]
        difficult = _flag(target, "ignore", n) | _flag(target, "iscrowd", n)
        corners = xyxy_to_voc(boxes.double().round()).long()  # [N, 4] 1-based (xmin, ymin, xmax, ymax)
        for k in range(n):
            obj = ET.SubElement(root, "object")
            ET.SubElement(obj, "name").text = names[int(target["labels"][k])]
            ET.SubElement(obj, "pose").text = "Unspecified"
            ET.SubElement(obj, "truncated").text = "0"
            ET.SubElement(obj, "difficult").text = str(int(difficult[k]))
            box = ET.SubElement(obj, "bndbox")
            xmin, ymin, xmax, ymax = corners[k].tolist()
            xmax, ymax = max(xmax, xmin), max(ymax, ymin)
            for tag, value in (("xmin", xmin), ("ymin", ymin), ("xmax", xmax), ("ymax", ymax)):
                ET.SubElement(box, tag).text = str(value)
        ET.indent(root)
        xml_path = out / "Annotations" / f"{stem}.xml"
        xml_path.parent.mkdir(parents=True, exist_ok=True)
        ET.ElementTree(root).write(xml_path, encoding="utf-8")
        stems.append(stem)
    sets = out / "ImageSets" / "Main"
    sets.mkdir(parents=True, exist_ok=True)
    (sets / f"{split}.txt").write_text("".join(f"{s}\n" for s in stems), encoding="utf-8")
    return out


def write_yolo(
    dataset: Dataset, out_dir: str | os.PathLike, split: str = "train", image_format: ImageFormat = "png"
) -> Path:
    """Write ``dataset`` as an ultralytics-style YOLO data set; returns the path of ``data.yaml``.

    ``data.yaml`` gets ``<split>: images/<split>`` (relative to the yaml's folder) (keeping entries written for other splits)
    and ``names`` as an ``{id: name}`` mapping. Crowd and ignore boxes are left out (counted in a warning).
    """
    _check(split, image_format)
    out = Path(out_dir)
    names = _class_names(dataset)
    skipped = 0
    for index, pil, target in _samples(dataset):
        stem = _stem(target, index)
        _save(pil, out / "images" / split / f"{stem}.{image_format}", image_format)
        boxes = target["boxes"].reshape(-1, 4).double()  # [N, 4] xyxy pixels
        n = boxes.shape[0]
        keep = ~(_flag(target, "ignore", n) | _flag(target, "iscrowd", n))
        skipped += int((~keep).sum())
        w, h = pil.width, pil.height
        lines = []
        norm = boxes / boxes.new_tensor([w, h, w, h])  # [N, 4] normalized corners
        # Keep a 1e-6 margin inside the image so 6-decimal rounding never puts a border box outside it.
        top_left = norm[:, :2].clamp(min=_MARGIN, max=1.0)  # [N, 2]
        bottom_right = torch.maximum(norm[:, 2:].clamp(max=1.0 - _MARGIN), top_left)  # [N, 2]
        cxcywh = convert_boxes(torch.cat([top_left, bottom_right], dim=1), "xyxy", "cxcywh")  # [N, 4]
        for k in np.flatnonzero(keep).tolist():
            cx, cy, bw, bh = cxcywh[k].tolist()
            lines.append(f"{int(target['labels'][k])} {cx:.6f} {cy:.6f} {bw:.6f} {bh:.6f}\n")
        label_path = out / "labels" / split / f"{stem}.txt"
        label_path.parent.mkdir(parents=True, exist_ok=True)
        label_path.write_text("".join(lines), encoding="utf-8")
    data_yaml = out / "data.yaml"
    data = {}
    if data_yaml.exists():
        data = yaml.safe_load(data_yaml.read_text(encoding="utf-8")) or {}
    data.pop("path", None)  # without ``path`` the folders are relative to data.yaml, wherever it is moved
    data.update({split: f"images/{split}", "names": dict(enumerate(names))})
    data_yaml.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    if skipped:
        warnings.warn(
            f"write_yolo({out}, split={split!r}): {skipped} crowd/ignore boxes left out (YOLO labels cannot mark them)",
            stacklevel=2,
        )
    return data_yaml


def _wider_line(box: list[float], width: int, height: int, invalid: bool) -> str:
    """One face line: integer ``x y w h`` (at least 1 x 1, inside the image) and the six attributes."""
    x1, y1, x2, y2 = box
    x, y = min(max(round(x1), 0), width - 1), min(max(round(y1), 0), height - 1)
    w, h = max(min(round(x2), width) - x, 1), max(min(round(y2), height) - y, 1)
    # blur expression illumination invalid occlusion pose
    return f"{x} {y} {w} {h} 0 0 0 {int(invalid)} 0 0\n"


def write_widerface(
    dataset: Dataset,
    out_dir: str | os.PathLike,
    split: Literal["train", "val"] = "train",
    image_format: ImageFormat = "png",
    event: str = "0--Synthetic",
) -> Path:
    """Write ``dataset`` in the WIDER FACE layout (what ``widerface:OUT`` reads); returns the ground-truth file.

    Layout: ``out_dir/WIDER_<split>/images/<event>/<n>_<image_id>.<ext>`` and
    ``out_dir/wider_face_split/wider_face_<split>_bbx_gt.txt``. Boxes are written as integer ``x y w h`` pixels
    (rounded corners, at least 1 x 1), so a round trip moves a corner by at most half a pixel. Frames of a
    sequence (targets with ``sequence_id``) go to one event folder per sequence, ``<id>--Sequence``.

    Args:
        split: ``"train"`` or ``"val"`` (the splits WIDER FACE's reader knows).
        event: the event folder of images that are not part of a sequence, ``<number>--<Name>`` as in WIDER.
    """
    _check(split, image_format)
    if split not in ("train", "val"):
        raise ValueError(f"split must be one of ('train', 'val') for WIDER FACE, got {split!r}")
    number, sep, name = event.partition("--")
    if not (number.isdigit() and sep and name) or any(c in event for c in "/\\: "):
        raise ValueError(f"event must look like '<number>--<Name>' (e.g. '0--Parade'), got {event!r}")
    out = Path(out_dir)
    names = _class_names(dataset)
    lines: list[str] = []
    other_class = 0
    for index, pil, target in _samples(dataset):
        if "sequence_id" in target:
            sequence = int(target["sequence_id"])
            folder, prefix = f"{sequence}--Sequence", str(sequence)
        else:
            folder, prefix = event, number
        relative = f"{folder}/{prefix}_{_stem(target, index)}.{image_format}"
        _save(pil, out / f"WIDER_{split}" / "images" / relative, image_format)
        boxes = target["boxes"].reshape(-1, 4).double()  # [N, 4] xyxy pixels
        n = boxes.shape[0]
        invalid = _flag(target, "ignore", n) | _flag(target, "iscrowd", n)
        other_class += int((target["labels"].reshape(-1) != 0).sum()) if n else 0
        lines += [relative + "\n", f"{n}\n"]
        if n == 0:
            lines.append("0 0 0 0 0 0 0 0 0 0\n")  # WIDER's own quirk: a zero count still has one line
        for k in range(n):
            lines.append(_wider_line(boxes[k].tolist(), pil.width, pil.height, bool(invalid[k])))
    gt_file = out / "wider_face_split" / f"wider_face_{split}_bbx_gt.txt"
    gt_file.parent.mkdir(parents=True, exist_ok=True)
    gt_file.write_text("".join(lines), encoding="utf-8")
    if other_class:
        warnings.warn(
            f"write_widerface({out}, split={split!r}): {other_class} boxes of classes other than "
            f"{names[0]!r} written as faces (WIDER FACE has one class)",
            stacklevel=2,
        )
    return gt_file
