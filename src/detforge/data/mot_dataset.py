"""``MOTDetectionDataset``: every frame of MOT-layout sequences as a detection sample (``--data mot:ROOT``).

Train or validate a detector on MOT17 / MOT20 / DanceTrack (or ``detforge data synth --format mot``) data; the
layout, the text format and the class conventions are :mod:`detforge.data.mot`'s.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from detforge.data.base import DetectionDataset, Record
from detforge.data.checks import IssueLog, validate_boxes
from detforge.data.mot import DISTRACTOR_LABELS, MOT_CLASSES, MOTSequence, list_sequences
from detforge.errors import DataError
from detforge.io import ImageMode

__all__ = ["MOTDetectionDataset"]

_MOT17_COPY = re.compile(r"(MOT17-\d+)-(DPM|FRCNN|SDP)")


def _unique_sequences(sequences: list[MOTSequence]) -> list[MOTSequence]:
    """MOT17 ships each sequence three times (``-DPM``, ``-FRCNN``, ``-SDP``: the same frames and gt, other
    public detections); keep the first copy of each."""
    seen: set[str] = set()
    kept = []
    for seq in sequences:
        match = _MOT17_COPY.fullmatch(seq.name)
        key = match.group(1) if match else seq.name
        if key not in seen:
            seen.add(key)
            kept.append(seq)
    return kept


class MOTDetectionDataset(DetectionDataset):
    """The frames of MOT sequences with their gt boxes; ``dataset[i] -> (image, target)``.

    Classes: MOTChallenge data (MOT16/17/20, DanceTrack: no ``classNames`` in ``seqinfo.ini``) has one class,
    ``"pedestrian"``: considered pedestrians (class 1) are targets; distractors (person on vehicle, static
    person, distractor, reflection; MOT20 also non-MOT vehicle), pedestrians marked not considered and those
    less visible than ``min_visibility`` are kept with ``ignore=True`` (neither taught nor penalised); vehicles,
    occluders and crowd boxes are not objects of this data set. Data with ``classNames`` (the synthetic video)
    keeps every class, not-considered boxes with ``ignore=True``.

    Sequences without ``gt/gt.txt`` (test splits) are left out with a warning; MOT17's three copies of a
    sequence count once. Boxes are validated as every reader's (clipped to the frame, counted in
    ``dataset.issues``).

    Args:
        root: a sequence folder, a split folder, or with ``split`` a data set root (see
            :func:`~detforge.data.mot.list_sequences`).
        split: sub-folder of ``root`` to read (``"train"``, ``"val"``, ``"test"``), or None.
        min_visibility: pedestrians of MOTChallenge data below this visibility get ``ignore=True``.
        imgsz, transforms, mode: see :class:`~detforge.data.base.DetectionDataset`.

    The target adds ``track_ids`` (int64 [N], the gt ids), ``frame_index`` (0-based frame in its sequence) and
    ``sequence_id`` (index into ``dataset.sequences()``).

    Raises:
        DataError: no sequence with gt, or sequences with different ``classNames``.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str | None = None,
        *,
        min_visibility: float = 0.0,
        imgsz: int | tuple[int, int] | None = None,
        transforms: Callable | None = None,
        mode: ImageMode = "RGB",
    ) -> None:
        where_root = os.path.join(os.fspath(root), split) if split else os.fspath(root)
        sequences = _unique_sequences(list_sequences(root, split))
        missing = [s.name for s in sequences if s.gt is None]
        sequences = [s for s in sequences if s.gt is not None]
        if not sequences:
            raise DataError(
                f"{where_root}: no sequence has gt/gt.txt (a test split?); nothing to train or validate on"
            )
        if missing:
            warnings.warn(
                f"{where_root}: {len(missing)} sequence(s) without gt/gt.txt left out: {', '.join(missing[:5])}",
                stacklevel=2,
            )
        names = {s.class_names for s in sequences}
        if len(names) > 1:
            raise DataError(
                f"{where_root}: the sequences name different classes in seqinfo.ini: {sorted(names)}"
            )
        source_names = names.pop()
        mot = source_names == MOT_CLASSES
        self._sequences = sequences
        log = IssueLog(where_root)
        records: list[Record] = []
        tracks: list[np.ndarray] = []
        self._frame_of: list[tuple[int, int]] = []  # (sequence index, 0-based frame) of each record
        for s_index, seq in enumerate(sequences):
            height, width = seq.size
            distractors = DISTRACTOR_LABELS["mot20" if seq.protocol == "mot20" else "mot17"]
            gt_file = os.path.join(seq.folder or seq.name, "gt", "gt.txt")
            for frame in range(1, seq.num_frames + 1):
                image_path = seq.frame_paths[frame - 1]
                if not os.path.exists(image_path):
                    log.add("missing_image", f"{seq.name} frame {frame} -> {image_path}")
                    continue
                entry = seq.gt.get(frame) if seq.gt else None
                if entry is None:
                    boxes, labels = np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
                    ids, ignore = np.zeros(0, np.int64), np.zeros(0, bool)
                else:
                    labels = entry["labels"].numpy()
                    hidden = (~entry["considered"].numpy()) | (entry["visibility"].numpy() < min_visibility)
                    if mot:
                        distractor = np.isin(labels, distractors)
                        keep = (labels == 0) | distractor
                        ignore = (distractor | hidden)[keep]
                        labels = np.zeros(int(keep.sum()), np.int64)
                    else:
                        keep = np.ones(len(labels), bool)
                        ignore = ~entry["considered"].numpy()
                    ids = entry["track_ids"].numpy()[keep]

                    def where(j: int, f: int = frame, i: np.ndarray = ids, g: str = gt_file) -> str:
                        return f"{g} frame {f} id {int(i[j])}"

                    boxes, ok = validate_boxes(entry["boxes"].numpy()[keep], height, width, log, where)
                    boxes, labels, ids, ignore = boxes[ok], labels[ok], ids[ok], ignore[ok]
                records.append(
                    Record(
                        len(records),
                        image_path,
                        boxes,
                        labels,
                        height,
                        width,
                        ignore=ignore,
                        source=f"{seq.name} frame {frame}",
                    )
                )
                tracks.append(ids)
                self._frame_of.append((s_index, frame - 1))
        class_names = ["pedestrian"] if mot else list(source_names)
        super().__init__(records, class_names, imgsz, transforms, mode, issues=log)
        self._tracks = torch.from_numpy(np.concatenate(tracks) if tracks else np.zeros(0, np.int64))  # [M]
        log.warn(stacklevel=3)

    def _extra_target(self, index: int) -> dict[str, Tensor | int]:
        lo, hi = self._offsets[index], self._offsets[index + 1]
        sequence, frame = self._frame_of[index]
        return {"track_ids": self._tracks[lo:hi].clone(), "frame_index": frame, "sequence_id": sequence}

    def sequences(self) -> list[MOTSequence]:
        """The sequences, in ``sequence_id`` order (the same method as ``SyntheticVideo.sequences``)."""
        return list(self._sequences)

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, sequences={len(self._sequences)})"
