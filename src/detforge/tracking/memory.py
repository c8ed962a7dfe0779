"""The edge detectors' tracker behind detforge's protocol, registered as ``memory``.

:class:`~detforge.models.edge.tracker.ObjectTracker` keeps a GRU state per object (the model's learnable
:class:`~detforge.models.edge.tracker.TrackMemory`, or none: constant velocity), predicts each track's next
box from its velocity and the GRU's correction, and matches detections by Hungarian assignment on IoU plus
appearance similarity. Nexus and Phantom track with it (``model.track_frame``); any detector can::

    tracker = create_tracker("memory", memory=model.memory)   # or memory=None
    tracker.update(dets, image)

Differences from the ``trackers``-based trackers (:mod:`detforge.tracking.roboflow`):

- **Every detection is reported** from its first frame (no confirmation period), with its input box; a
  track missed for up to ``max_missed`` frames reports nothing but keeps its id.
- **Class-aware**: a detection only continues a track of its own class, so labels never change along a track.
- **Appearance**: detections carrying ``embeddings`` (Tensor[N, E], e.g. pooled features) are matched on IoU +
  ``appearance_weight`` x cosine similarity. Give them on every frame of a sequence or on none.
- **Track confidence**: each track accumulates ``1 - (1 - decay * c) (1 - score)`` over its matches.
  ``report_score="track"`` reports it in ``scores`` instead of the detection's score, and
  ``min_track_score`` holds a box back until its track's confidence reaches it (Phantom's
  ``detection_threshold``).
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import numpy as np
import torch
from torch import Tensor

from detforge.errors import InvalidValueError
from detforge.tracking.base import Tracker, select_tracks
from detforge.tracking.registry import register_tracker

__all__ = ["MemoryTracker", "ReportScore"]

ReportScore = Literal["detection", "track"]
"""Which score a reported box carries: its detection's, or its track's accumulated confidence."""


@register_tracker("memory")
class MemoryTracker(Tracker):
    """:class:`~detforge.models.edge.tracker.ObjectTracker` behind the protocol (see the module docstring).

    Args:
        memory: a ``TrackMemory`` (``model.memory`` of Nexus or Phantom), or None for constant velocity.
        image_size: (h, w) of the frames, to normalise the GRU's geometry input; default: the size of the
            first ``image`` given to :meth:`update` (needed only with a ``memory``).
        min_iou: IoU a detection needs with a track's predicted box to continue it.
        appearance_weight: weight of the embeddings' cosine similarity in the matching score.
        max_missed: frames a track survives without a detection.
        confidence_decay: how much of a track's accumulated confidence carries over to the next frame.
        report_score: ``"detection"`` (the input score) or ``"track"`` (the accumulated confidence).
        min_track_score: a box is reported once its track's accumulated confidence reaches this.
    """

    def __init__(
        self,
        *,
        memory: torch.nn.Module | None = None,
        image_size: tuple[int, int] | None = None,
        min_iou: float = 0.2,
        appearance_weight: float = 0.3,
        max_missed: int = 5,
        confidence_decay: float = 0.9,
        report_score: ReportScore = "detection",
        min_track_score: float = 0.0,
    ) -> None:
        from detforge.models.edge.tracker import TrackMemory

        if memory is not None and not isinstance(memory, TrackMemory):
            raise InvalidValueError(
                f"memory must be a TrackMemory (a Nexus or Phantom model's .memory) or None, got {type(memory).__name__}"
            )
        if report_score not in get_args(ReportScore):
            raise InvalidValueError(
                f"report_score must be one of {get_args(ReportScore)}, got {report_score!r}"
            )
        for name, value in (("min_iou", min_iou), ("confidence_decay", confidence_decay)):
            if not 0.0 <= float(value) <= 1.0:
                raise InvalidValueError(f"{name} must be in [0, 1], got {value!r}")
        if not 0.0 <= float(min_track_score) <= 1.0:
            raise InvalidValueError(f"min_track_score must be in [0, 1], got {min_track_score!r}")
        if isinstance(max_missed, bool) or int(max_missed) != max_missed or max_missed < 0:
            raise InvalidValueError(f"max_missed must be an integer >= 0, got {max_missed!r}")
        if image_size is not None and (len(image_size) != 2 or min(image_size) < 1):
            raise InvalidValueError(f"image_size must be (h, w) in pixels, got {image_size!r}")
        self.memory = memory
        self.image_size = None if image_size is None else (int(image_size[0]), int(image_size[1]))
        self.min_iou = float(min_iou)
        self.appearance_weight = float(appearance_weight)
        self.max_missed = int(max_missed)
        self.confidence_decay = float(confidence_decay)
        self.report_score = report_score
        self.min_track_score = float(min_track_score)
        self.reset()

    def reset(self) -> None:
        self.tracker = None  # ObjectTracker of the current sequence, made on its first frame
        self._frame_size: tuple[int, int] | None = None
        self._embeddings: bool | None = None  # whether this sequence's detections carry embeddings

    def __repr__(self) -> str:
        memory = "None" if self.memory is None else f"TrackMemory(hidden_size={self.memory.hidden_size})"
        return (
            f"MemoryTracker(memory={memory}, min_iou={self.min_iou}, max_missed={self.max_missed}, "
            f"report_score={self.report_score!r}, min_track_score={self.min_track_score})"
        )

    def update(self, detections: Any, image: Tensor | np.ndarray | None = None) -> dict[str, Tensor]:
        if self._frame_size is None and image is not None:
            shape = tuple(image.shape)
            self._frame_size = (int(shape[-2]), int(shape[-1])) if isinstance(image, Tensor) else shape[:2]
        return super().update(detections, image)

    def _object_tracker(self):
        from detforge.models.edge.tracker import ObjectTracker

        size = self.image_size or self._frame_size
        if size is None:
            if self.memory is not None:
                raise InvalidValueError(
                    "the memory tracker with a TrackMemory needs the frame size: create it with image_size=(h, w) "
                    "or pass the frame as image to update"
                )
            size = (1, 1)  # constant velocity: geometry is not normalised
        return ObjectTracker(
            memory=self.memory,
            image_size=size,
            min_iou=self.min_iou,
            appearance_weight=self.appearance_weight,
            max_missed=self.max_missed,
            confidence_decay=self.confidence_decay,
        )

    def _update(self, detections: dict[str, Any], image: np.ndarray | None) -> dict[str, Tensor]:
        embeddings = self._check_embeddings(detections)
        if self.tracker is None:
            self.tracker = self._object_tracker()
        ids, confidence = self.tracker.update(
            detections["boxes"], detections["scores"], detections["labels"], embeddings
        )  # [N] each, input order
        rows = torch.nonzero(confidence >= self.min_track_score).flatten()  # [M]
        out = select_tracks(detections, rows, ids[rows])
        if self.report_score == "track":
            out["scores"] = confidence[rows].float()
        return out

    def _check_embeddings(self, detections: dict[str, Any]) -> Tensor | None:
        embeddings = detections.get("embeddings")
        n = int(detections["boxes"].shape[0])
        if embeddings is not None:
            if not isinstance(embeddings, Tensor) or embeddings.ndim != 2 or embeddings.shape[0] != n:
                shape = tuple(embeddings.shape) if hasattr(embeddings, "shape") else type(embeddings).__name__
                raise InvalidValueError(
                    f"tracker.update: embeddings must be Tensor[N, E] with N = {n}, got {shape}"
                )
            embeddings = embeddings.detach().float().cpu()
        given = embeddings is not None
        if self._embeddings is None:
            self._embeddings = given
        elif self._embeddings != given:
            raise InvalidValueError(
                "tracker.update: give detections embeddings on every frame of a sequence or on none "
                "(call reset() between sequences)"
            )
        return embeddings
