"""Track a data set's sequences with a detector and score them: ``detforge val --track``.

Each sequence (:class:`~detforge.data.mot.MOTSequence`: a MOT-layout folder or a rendered ``synthetic-video``
sequence) runs through the same loop as ``detforge track`` (:func:`detforge.tracking.run.run_sequence`), and
its tracked boxes are scored against the ground truth with :mod:`detforge.tracking.metrics` (HOTA, MOTA,
IDF1, ...), per sequence and combined as TrackEval combines them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor

__all__ = ["TrackingEvaluation", "dataset_sequences", "evaluate_tracking"]


def dataset_sequences(dataset) -> list:
    """The sequences of a video data set (``synthetic-video``, ``mot:ROOT``), or a
    :class:`~detforge.errors.InvalidValueError` saying which data sets have them."""
    from detforge.errors import InvalidValueError

    if not hasattr(dataset, "sequences"):
        raise InvalidValueError(
            f"--track: {type(dataset).__name__} has no sequences with track ids; use a video data set "
            "(--data synthetic-video[:N] or --data mot:ROOT[:SPLIT])"
        )
    return list(dataset.sequences())


@dataclass
class TrackingEvaluation:
    """The metrics (:class:`~detforge.tracking.metrics.MOTResult`), frames, and seconds per stage summed over
    the sequences (``network``, ``track``, ``decode``, ...)."""

    result: object
    frames: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    wall: float = 0.0


def evaluate_tracking(
    sequences: Iterable,
    pipeline: Callable[[list[Tensor]], list[dict[str, Tensor]]],
    tracker,
    *,
    conf: float,
    batch: int = 8,
    channels: int = 3,
    out: Path | None = None,
    iou_threshold: float = 0.5,
    progress: bool = False,
) -> TrackingEvaluation:
    """Track every sequence with ``pipeline`` (decoded frames -> detections) and ``tracker`` (reset per
    sequence) and score the tracks against each sequence's ``gt``. With ``out``, each sequence's results are
    written as ``<out>/<name>.txt`` (MOT-challenge format, what TrackEval reads)."""
    from detforge.errors import DataError
    from detforge.tracking.metrics import evaluate_sequences
    from detforge.tracking.run import run_sequence
    from detforge.tracking.video import VideoSource

    runs, frames, wall = [], 0, 0.0
    seconds: dict[str, float] = {}
    for sequence in sequences:
        if sequence.gt is None:
            raise DataError(
                f"{sequence.folder or sequence.name}: no ground truth (gt/gt.txt) to score tracks on"
            )
        report = run_sequence(
            VideoSource.from_sequence(sequence),
            pipeline,
            conf=conf,
            tracker=tracker,
            out=out,
            batch=batch,
            channels=channels,
            draw=False,
            progress=progress,
        )
        runs.append((sequence, report.tracked))
        frames += report.frames
        wall += report.wall
        for key, value in report.seconds.items():
            seconds[key] = seconds.get(key, 0.0) + value
    result = evaluate_sequences(runs, iou_threshold=iou_threshold)
    return TrackingEvaluation(result, frames, seconds, wall)
