"""Tiny on-disk datasets in every supported layout, written with Pillow into tmp_path.

Each fixture is a factory: call it (optionally with a ``mutate`` hook that edits the annotations before they
are written) to get the paths, so each bad-input test is one small mutation of a good dataset.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def write_image(path: Path, height: int, width: int, seed: int = 0, fmt: str | None = None) -> np.ndarray:
    """Write a random RGB image; returns its pixels ``[H, W, 3]`` uint8."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format=fmt)
    return pixels


# COCO: three images (the last without annotations), categories with gappy ids 3 and 7, one crowd region.
COCO_SIZES = [(40, 60), (50, 30), (32, 32)]  # (h, w)


def coco_dict() -> dict:
    return {
        "images": [
            {"id": 10 + k, "file_name": f"img{k}.png", "height": h, "width": w}
            for k, (h, w) in enumerate(COCO_SIZES)
        ],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 3, "bbox": [5, 6, 20, 10], "area": 150.0, "iscrowd": 0},
            {
                "id": 2,
                "image_id": 10,
                "category_id": 7,
                "bbox": [30, 0, 30, 40],
                "area": 1000.0,
                "iscrowd": 1,
            },
            {"id": 3, "image_id": 11, "category_id": 7, "bbox": [0, 0, 30, 50], "area": 1500.0, "iscrowd": 0},
        ],
        "categories": [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}],
    }


@pytest.fixture
def make_coco(tmp_path: Path) -> Callable[..., tuple[Path, Path]]:
    """``make_coco(mutate=None, text=None) -> (image_dir, ann_file)``."""

    def make(mutate: Callable[[dict], None] | None = None, text: str | None = None) -> tuple[Path, Path]:
        image_dir = tmp_path / "coco" / "images"
        for k, (h, w) in enumerate(COCO_SIZES):
            write_image(image_dir / f"img{k}.png", h, w, seed=k)
        data = coco_dict()
        if mutate is not None:
            mutate(data)
        ann_file = tmp_path / "coco" / "instances.json"
        ann_file.write_text(text if text is not None else json.dumps(data))
        return image_dir, ann_file

    return make


def voc_xml(filename: str, size: tuple[int, int] | None, objects: list[tuple[str, tuple, int]]) -> str:
    """VOC xml text; ``objects`` are ``(name, (xmin, ymin, xmax, ymax) 1-based, difficult)``."""
    size_xml = (
        f"<size><width>{size[1]}</width><height>{size[0]}</height><depth>3</depth></size>" if size else ""
    )
    objs = "".join(
        f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for n, b, d in objects
    )
    return f"<annotation><filename>{filename}</filename>{size_xml}{objs}</annotation>"


VOC_ITEMS = {
    "a": ((40, 60), [("person", (1, 1, 20, 30), 0), ("car", (30, 10, 60, 40), 1)]),
    "b": ((30, 30), [("car", (5, 5, 15, 15), 0)]),
    "c": ((20, 20), []),
}


@pytest.fixture
def make_voc(tmp_path: Path) -> Callable[..., Path]:
    """``make_voc(tree=True, mutate=None) -> root``; ``mutate(items)`` edits ``{stem: (size, objects)}``
    and may return ``{stem: raw xml text}`` overrides."""

    def make(tree: bool = True, mutate: Callable[[dict], dict | None] | None = None) -> Path:
        root = tmp_path / ("voc_tree" if tree else "voc_flat")
        items = {k: (s, list(o)) for k, (s, o) in VOC_ITEMS.items()}
        overrides = (mutate(items) if mutate else None) or {}
        ann_dir, img_dir = (root / "Annotations", root / "JPEGImages") if tree else (root, root)
        for k, (stem, (size, objects)) in enumerate(items.items()):
            h, w = size if size else (20, 20)
            write_image(img_dir / f"{stem}.jpg", h, w, seed=k)
            ann_dir.mkdir(parents=True, exist_ok=True)
            text = overrides.get(stem, voc_xml(f"{stem}.jpg", size, objects))
            (ann_dir / f"{stem}.xml").write_text(text)
        if tree:
            sets = root / "ImageSets" / "Main"
            sets.mkdir(parents=True)
            (sets / "train.txt").write_text("a\nb\n")
            (sets / "val.txt").write_text("c\n")
        return root

    return make


# YOLO: class cx cy w h normalized; "c" has an empty label file, "d" has none.
YOLO_LABELS = {
    "a": "0 0.5 0.5 0.5 0.5\n1 0.25 0.25 0.1 0.2\n",
    "b": "1 0.5 0.5 1.0 1.0\n",
    "c": "",
}


@pytest.fixture
def make_yolo(tmp_path: Path) -> Callable[..., Path]:
    """``make_yolo(labels=None, names=None) -> data.yaml``; images are 40x60 (h x w)."""

    def make(labels: dict[str, str] | None = None, names: list[str] | dict | None = None) -> Path:
        root = tmp_path / "yolo"
        labels = YOLO_LABELS if labels is None else labels
        for split in ("train", "val"):
            for k, stem in enumerate([*labels, "d"]):
                write_image(root / "images" / split / f"{stem}.jpg", 40, 60, seed=k)
            (root / "labels" / split).mkdir(parents=True, exist_ok=True)
            for stem, text in labels.items():
                (root / "labels" / split / f"{stem}.txt").write_text(text)
        data_yaml = root / "data.yaml"
        names = ["cat", "dog"] if names is None else names
        data_yaml.write_text(
            json.dumps({"path": ".", "train": "images/train", "val": "images/val", "names": names})
        )
        return data_yaml

    return make


WIDER_GT = """0--Parade/0_a.jpg
2
1 2 10 12 0 0 0 0 0 0
20 5 8 8 1 1 0 1 0 0
0--Parade/0_b.jpg
0
0 0 0 0 0 0 0 0 0 0
1--Handshaking/1_c.jpg
1
0 0 30 40 2 0 1 0 2 1
"""
WIDER_IMAGES = {
    "0--Parade/0_a.jpg": (40, 50),
    "0--Parade/0_b.jpg": (20, 20),
    "1--Handshaking/1_c.jpg": (40, 30),
}


@pytest.fixture
def make_wider(tmp_path: Path) -> Callable[..., Path]:
    """``make_wider(gt=WIDER_GT, split="train") -> root``."""

    def make(gt: str = WIDER_GT, split: str = "train") -> Path:
        root = tmp_path / "wider"
        for k, (name, (h, w)) in enumerate(WIDER_IMAGES.items()):
            write_image(root / f"WIDER_{split}" / "images" / name, h, w, seed=k)
        (root / "wider_face_split").mkdir(parents=True, exist_ok=True)
        (root / "wider_face_split" / f"wider_face_{split}_bbx_gt.txt").write_text(gt)
        return root

    return make


@pytest.fixture
def make_masks(tmp_path: Path) -> Callable[..., Path]:
    """``make_masks() -> root`` in Penn-Fudan layout: ``p1`` has instances 1 and 2, ``p2`` none."""

    def make() -> Path:
        root = tmp_path / "masks"
        (root / "PedMasks").mkdir(parents=True)
        write_image(root / "PNGImages" / "p1.png", 30, 40, seed=1)
        write_image(root / "PNGImages" / "p2.png", 20, 20, seed=2)
        mask = np.zeros((30, 40), dtype=np.uint8)
        mask[2:10, 3:8] = 1  # rows 2..9, cols 3..7 -> box [3, 2, 8, 10]
        mask[20:30, 30:40] = 2  # touches the bottom-right border -> [30, 20, 40, 30]
        Image.fromarray(mask, mode="L").save(root / "PedMasks" / "p1_mask.png")
        Image.fromarray(np.zeros((20, 20), np.uint8), mode="L").save(root / "PedMasks" / "p2_mask.png")
        return root

    return make
