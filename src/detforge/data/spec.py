"""One dataset spec string for every command's ``--data``.

Accepted forms:

- ``synthetic[:N]``, ``synthetic-thermal[:N]``, ``synthetic-sequence[:N]``: the built-in procedural shapes.
  train: N images (default 512), seed 0; val: ``max(N // 4, 32)`` images, seed 1.
- ``synthetic-dense[:N]``: crowded scenes, 20 to 80 objects of 6 to 40 px in images of 512 to 1024 px
  (:class:`~detforge.data.synthetic_dense.SyntheticDense`); train N images (default 256), seed 0; val
  ``max(N // 4, 32)``, seed 1. Images keep their drawn sizes (no ``image_size``).
- ``synthetic-video[:N]``: N sequences (default 8) of 60 frames, 256 x 256 px, of shapes that move, cross,
  hide each other, enter and leave the frame, with ground-truth track ids
  (:class:`~detforge.data.synthetic_video.SyntheticVideo`); train: N sequences, seed 0; val:
  ``max(N // 2, 4)`` sequences, seed 1. Every frame is a sample (``track_ids``, ``frame_index`` and
  ``sequence_id`` in its target); ``dataset.sequences()`` gives them as sequences for tracking.
- ``coco:ANN.json:IMAGES_DIR``: the same file and folder for train and val.
- ``voc:DIR``: a VOC tree (``ImageSets/Main/{split}.txt`` picks the images when it exists, else every xml)
  or a plain folder of image + xml pairs (the whole folder for both splits).
- ``yolo:DATA.yaml``: the yaml's ``train`` / ``val`` entry.
- ``widerface:ROOT[:split]``: WIDER FACE; a split written in the spec wins over ``split``.
- ``masks:DIR``: images + instance masks (Penn-Fudan layout); the whole folder for both splits.
- ``mot:ROOT[:SPLIT]``: every frame of MOT-layout sequences (MOT17, MOT20, DanceTrack, ``detforge data synth
  --format mot``; :class:`~detforge.data.mot_dataset.MOTDetectionDataset`): ``ROOT/SPLIT`` when the spec names
  a split (for both train and val); else ``ROOT/train`` or ``ROOT/val`` when that folder exists, else ``ROOT``
  itself (a split folder or one sequence). MOTChallenge data has one class, pedestrian (distractors and
  not-considered boxes kept as ``ignore``); MOT17's three copies of a sequence count once.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any, Literal

from torch.utils.data import Dataset

from detforge.data.deprecation import renamed_kwargs
from detforge.errors import DataError

__all__ = ["SPEC_FORMS", "build_dataset", "parse_spec"]

SPEC_FORMS = (
    "synthetic[:N]",
    "synthetic-thermal[:N]",
    "synthetic-sequence[:N]",
    "synthetic-dense[:N]",
    "synthetic-video[:N]",
    "coco:ANN.json:IMAGES_DIR",
    "voc:DIR",
    "yolo:DATA.yaml",
    "widerface:ROOT[:train|val]",
    "masks:DIR",
    "mot:ROOT[:SPLIT]",
)
_SYNTHETIC_MODES = {"synthetic": "rgb", "synthetic-thermal": "thermal", "synthetic-sequence": "sequence"}


def _bad(spec: str, why: str) -> DataError:
    return DataError(f"dataset spec {spec!r}: {why}; accepted forms: {', '.join(SPEC_FORMS)}")


def parse_spec(spec: str) -> tuple[str, list[str]]:
    """``"coco:a.json:imgs"`` -> ``("coco", ["a.json", "imgs"])``; checks the kind and the number of parts.

    A Windows drive letter (``C:\\data``) is not split off as a separate part.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise _bad(str(spec), "empty")
    kind, _, rest = spec.strip().partition(":")
    parts = _split_paths(rest) if rest else []
    if kind in _SYNTHETIC_MODES or kind in ("synthetic-dense", "synthetic-video"):
        if len(parts) > 1 or (parts and not parts[0].isdigit()) or (parts and int(parts[0]) <= 0):
            raise _bad(spec, "N must be a positive integer")
    elif kind == "coco":
        if len(parts) != 2:
            raise _bad(spec, "coco needs an annotation file and an image folder")
    elif kind in ("voc", "yolo", "masks"):
        if len(parts) != 1:
            raise _bad(spec, f"{kind} needs exactly one path")
    elif kind == "widerface":
        if len(parts) == 2 and parts[1] not in ("train", "val"):
            raise _bad(spec, f"widerface split must be train or val, got {parts[1]!r}")
        if len(parts) not in (1, 2):
            raise _bad(spec, "widerface needs ROOT and optionally :train or :val")
    elif kind == "mot":
        if len(parts) == 2 and not re.fullmatch(r"[\w.-]+", parts[1]):
            raise _bad(spec, f"mot split must be a folder name like train or val, got {parts[1]!r}")
        if len(parts) not in (1, 2) or not parts[0]:
            raise _bad(spec, "mot needs ROOT and optionally :SPLIT")
    else:
        raise _bad(spec, f"unknown kind {kind!r}")
    return kind, parts


def _split_paths(rest: str) -> list[str]:
    parts = rest.split(":")
    merged: list[str] = []
    for p in parts:
        # "C" followed by "\\data" or "/data": a drive letter, not a separator.
        if merged and len(merged[-1]) == 1 and merged[-1].isalpha() and p[:1] in ("\\", "/"):
            merged[-1] = f"{merged[-1]}:{p}"
        else:
            merged.append(p)
    return merged


@renamed_kwargs(target_size="imgsz")
def build_dataset(
    spec: str,
    split: Literal["train", "val"] = "train",
    imgsz: int | tuple[int, int] | None = None,
    transforms: Callable | None = None,
    **kwargs: Any,
) -> Dataset:
    """Build the dataset a spec string names (see this module's docstring for the forms and splits).

    Args:
        spec: e.g. ``"synthetic:256"``, ``"coco:ann.json:images"``, ``"widerface:/data/wider:val"``.
        split: ``"train"`` or ``"val"``.
        imgsz: ``(H, W)`` (or an int for a square) every image is resized to (boxes scale with it); None keeps
            file sizes. ``target_size=`` is its deprecated name.
        transforms: ``transforms(image_uint8, target) -> (image, target)`` (synthetic data gets it as is).
        **kwargs: passed on to the dataset class (e.g. ``mode="L"``, ``image_size=`` for synthetic);
            ``mode="L"`` on a synthetic spec renders the thermal (1-channel) variant.

    Raises:
        DataError: the spec is malformed (the message lists the accepted forms), or a file it names cannot be
            read (a ``ValueError``; a missing file: ``MissingFileError``, a ``FileNotFoundError``).
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be one of ('train', 'val'), got {split!r}")
    kind, parts = parse_spec(spec)
    common = {"imgsz": imgsz, "transforms": transforms, **kwargs}
    if kind == "synthetic-dense":
        from detforge.data.synthetic_dense import SyntheticDense

        n = int(parts[0]) if parts else 256
        num_images, seed = (n, 0) if split == "train" else (max(n // 4, 32), 1)
        mode = common.pop("mode", None)
        if mode not in (None, "RGB"):
            raise DataError(
                f"dataset spec {spec!r}: synthetic-dense renders RGB images only, got mode={mode!r}"
            )
        return SyntheticDense(num_images=num_images, seed=seed, **common)
    if kind == "synthetic-video":
        from detforge.data.synthetic_video import SyntheticVideo

        n = int(parts[0]) if parts else 8
        num_sequences, seed = (n, 0) if split == "train" else (max(n // 2, 4), 1)
        mode = common.pop("mode", None)
        if mode not in (None, "RGB"):
            raise DataError(
                f"dataset spec {spec!r}: synthetic-video renders RGB images only, got mode={mode!r}"
            )
        return SyntheticVideo(num_sequences=num_sequences, seed=seed, **common)
    if kind == "mot":
        from detforge.data.mot_dataset import MOTDetectionDataset

        root = parts[0]
        sub = parts[1] if len(parts) == 2 else split if os.path.isdir(os.path.join(root, split)) else None
        return MOTDetectionDataset(root, sub, **common)
    if kind in _SYNTHETIC_MODES:
        from detforge.data.synthetic import SyntheticShapes

        n = int(parts[0]) if parts else 512
        num_images, seed = (n, 0) if split == "train" else (max(n // 4, 32), 1)
        mode = common.pop("mode", None)
        # The file readers' image modes map onto the synthetic ones: "L" renders thermal (1 channel) images.
        mode = {None: _SYNTHETIC_MODES[kind], "RGB": _SYNTHETIC_MODES[kind], "L": "thermal"}.get(mode, mode)
        return SyntheticShapes(num_images=num_images, seed=seed, mode=mode, **common)
    if kind == "coco":
        from detforge.data.coco import CocoDataset

        return CocoDataset(parts[1], parts[0], **common)
    if kind == "voc":
        from detforge.data.voc import VOCDataset

        return VOCDataset(parts[0], split=split, **common)
    if kind == "yolo":
        from detforge.data.yolo import YoloDataset

        return YoloDataset(parts[0], split=split, **common)
    if kind == "widerface":
        from detforge.data.widerface import WiderFaceDataset

        return WiderFaceDataset(parts[0], split=parts[1] if len(parts) == 2 else split, **common)
    from detforge.data.masks import MaskDataset

    return MaskDataset(parts[0], **common)
