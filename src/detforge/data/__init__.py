"""Datasets: readers for COCO, Pascal VOC, WIDER FACE, YOLO-txt, instance masks and MOT sequences, the built-in
synthetic shapes (and their video), transforms, the data module, writers, and the checks behind ``detforge doctor``.

Every dataset returns ``(image Tensor[C, H, W] float in [0, 1], target dict)`` as docs/architecture.md
describes; :func:`build_dataset` turns a spec string (``synthetic:256``, ``coco:ann.json:images``, ...) into
one.
"""

from __future__ import annotations

import importlib
from typing import Any

from detforge.data.base import Annotation, DetectionDataset, Record
from detforge.data.checks import IssueLog
from detforge.data.coco import CocoDataset
from detforge.data.masks import MaskDataset
from detforge.data.spec import build_dataset
from detforge.data.voc import VOCDataset
from detforge.data.widerface import WiderFaceDataset
from detforge.data.yolo import YoloDataset

# Loaded on first use, so that ``import detforge.data`` works even when one of these modules is unavailable.
_LAZY = {
    "SyntheticShapes": "detforge.data.synthetic",
    "SyntheticVideo": "detforge.data.synthetic_video",
    "MOTDetectionDataset": "detforge.data.mot_dataset",
    "MOTSequence": "detforge.data.mot",
    "list_sequences": "detforge.data.mot",
    "read_mot_txt": "detforge.data.mot",
    "write_mot_txt": "detforge.data.mot",
    "build_train_transforms": "detforge.data.transforms",
    "build_val_transforms": "detforge.data.transforms",
    "DetectionDataModule": "detforge.data.datamodule",
    "detection_collate": "detforge.data.datamodule",
    "write_coco": "detforge.data.writers",
    "write_voc": "detforge.data.writers",
    "write_yolo": "detforge.data.writers",
    "run_doctor": "detforge.data.doctor",
}

__all__ = [
    "Annotation",
    "CocoDataset",
    "DetectionDataset",
    "IssueLog",
    "MaskDataset",
    "Record",
    "VOCDataset",
    "WiderFaceDataset",
    "YoloDataset",
    "build_dataset",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'detforge.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
