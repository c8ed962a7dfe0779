"""SORT, ByteTrack, OC-SORT and BoT-SORT from Roboflow's ``trackers`` package (Apache-2.0) behind detforge's
tracker protocol, registered as ``sort``, ``bytetrack-roboflow``, ``ocsort`` and ``botsort``.

``bytetrack-roboflow`` is the reference of detforge's own ``bytetrack`` (the default tracker,
:mod:`detforge.tracking.bytetrack`: the same algorithm, options and results with the tracks' Kalman filters
batched, several times faster); ``tests/tracking/test_bytetrack.py`` compares the two.

What the wrapper does, and nothing more (``tests/tracking/test_roboflow.py`` compares it with the raw calls):

- **Reported boxes** are the *input boxes* of the detections a confirmed track took this frame (the
  ``trackers`` update returns its input detections, each with a ``tracker_id``), with their input scores and
  labels; not the Kalman-filtered boxes. A detection no confirmed track took (``tracker_id`` -1: a track
  not yet confirmed for ``minimum_consecutive_frames``, a low-score detection left unmatched, a new track
  below ``track_activation_threshold``) is not reported. A track missed this frame reports nothing.
- **Ids**: the package numbers tracks from 0; the wrapper reports its id + 1 (ids from 1), unique within a
  sequence and never reused; :meth:`~detforge.tracking.base.Tracker.reset` starts again at 1.
- **Classes**: the ``trackers`` trackers associate boxes by IoU alone and ignore ``class_id``. With
  ``per_class=False`` (the default, as ultralytics and the ByteTrack paper do) a track may take detections
  of any class, and each reported box carries *its own detection's* label: a track whose detector flips
  between "car" and "truck" keeps its id and reports the label of each frame. With ``per_class=True`` each
  class runs its own tracker (a box only continues a track of its class; a person and a bicycle crossing
  cannot swap ids) and ids stay unique over all classes; the trackers' work (and BoT-SORT's camera-motion
  estimate) is then paid once per class present.
- **Low scores**: ``minimum_score`` drops detections below it before tracking (they are never reported);
  ByteTrack and BoT-SORT default to 0.1, the ByteTrack paper's low threshold, because their second stage
  would otherwise let any box a detector's ``score_thresh`` lets through continue a track.

BoT-SORT's camera-motion compensation needs the frame: pass ``image`` to ``update`` (without it, or with
``cmc_method="none"``, BoT-SORT tracks as ByteTrack with fused scores).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Literal, get_args

import numpy as np
import torch
from torch import Tensor

from detforge.errors import InvalidValueError
from detforge.tracking.base import Tracker, select_tracks
from detforge.tracking.convert import to_sv_detections, tracked_rows
from detforge.tracking.options import at_least as _at_least
from detforge.tracking.options import common_options as _common
from detforge.tracking.options import flag as _flag
from detforge.tracking.options import fraction as _fraction
from detforge.tracking.options import positive as _positive
from detforge.tracking.registry import register_tracker

__all__ = ["CMCMethod", "SupervisionTracker", "botsort", "bytetrack_roboflow", "ocsort", "sort"]

CMCMethod = Literal["sparseOptFlow", "orb", "sift", "ecc", "none"]
"""BoT-SORT's camera-motion compensation: OpenCV's sparse optical flow, ORB / SIFT features, ECC, or off."""


class SupervisionTracker(Tracker):
    """A tracker of Roboflow's ``trackers`` package (anything with ``update(sv.Detections, frame=None)`` and
    ``reset()``) behind detforge's protocol; see the module docstring for what it reports.

    Args:
        factory: builds one ``trackers`` tracker (called again per class with ``per_class``).
        per_class: one tracker per class (association within a class only) instead of one for all boxes.
        minimum_score: detections scoring below this are dropped before tracking.
        uses_image: pass the frame (BGR, as OpenCV and ``trackers`` take it) to the tracker's ``update``.
        name: the registered name, for ``repr``.
        options: the options it was built with, for ``repr``.
    """

    def __init__(
        self,
        factory: Callable[[], Any],
        *,
        per_class: bool = False,
        minimum_score: float = 0.0,
        uses_image: bool = False,
        name: str | None = None,
        options: dict[str, Any] | None = None,
    ) -> None:
        self.factory = factory
        self.name = name or type(self).__name__
        self.per_class = bool(per_class)
        self.minimum_score = float(minimum_score)
        self.uses_image = uses_image
        self.options = dict(options or {})
        self.reset()

    def reset(self) -> None:
        self._trackers: dict[int | None, Any] = {}  # class (None: all classes) -> trackers' tracker
        self._ids: dict[tuple[int | None, int], int] = {}  # (class, trackers' id) -> detforge id
        self._next_id = 1

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"{self.name}({opts})"

    def _update(self, detections: dict[str, Any], image: np.ndarray | None) -> dict[str, Tensor]:
        scores, labels = detections["scores"], detections["labels"]
        rows = torch.nonzero(scores >= self.minimum_score).flatten()  # [K] input rows that enter tracking
        if self.per_class:
            groups: dict[int | None, Tensor] = {c: rows[:0] for c in self._trackers}  # absent classes age
            for c in labels[rows].unique().tolist():
                groups[int(c)] = rows[labels[rows] == c]
        else:
            groups = {None: rows}
        frame = None if image is None else np.ascontiguousarray(image[..., ::-1])  # RGB -> BGR
        found_rows: list[Tensor] = []
        found_ids: list[int] = []
        for key, group in groups.items():
            tracker = self._trackers.get(key)
            if tracker is None:
                tracker = self._trackers[key] = self.factory()
            sv_dets = to_sv_detections(detections, group)
            result = tracker.update(sv_dets, frame=frame) if self.uses_image else tracker.update(sv_dets)
            kept, ids = tracked_rows(result)  # [M_k] each; the tracker's ids, from 0
            for i in sorted(ids.tolist()):  # new tracks: detforge ids in the order the tracker numbered them
                self._detforge_id(key, i)
            found_rows.append(kept)
            found_ids.extend(self._ids[(key, i)] for i in ids.tolist())
        rows_out = torch.cat(found_rows) if found_rows else torch.zeros(0, dtype=torch.int64)
        return select_tracks(detections, rows_out, torch.tensor(found_ids, dtype=torch.int64))

    def _detforge_id(self, key: int | None, tracker_id: int) -> int:
        """The detforge id of the tracker ``key``'s track ``tracker_id``: a new one (the next from 1) the first
        time it is seen."""
        known = self._ids.get((key, tracker_id))
        if known is None:
            known = self._ids[(key, tracker_id)] = self._next_id
            self._next_id += 1
        return known


def _build(cls: Any, kwargs: dict[str, Any], options: dict[str, Any], **wrapper: Any) -> SupervisionTracker:
    """The wrapper of ``cls(**kwargs)``; ``options`` are the registered builder's arguments (for ``repr``);
    ``wrapper`` may name it (default: the package's ``tracker_id``)."""
    return SupervisionTracker(
        functools.partial(cls, **kwargs),
        name=wrapper.pop("name", cls.tracker_id),
        per_class=_flag("per_class", options["per_class"]),
        minimum_score=_fraction("minimum_score", options.get("minimum_score", 0.0)),
        options=options,
        **wrapper,
    )


# ---- registered trackers ---------------------------------------------------------------------------------
@register_tracker("bytetrack-roboflow")
def bytetrack_roboflow(
    *,
    track_activation_threshold: float = 0.7,
    high_conf_det_threshold: float = 0.6,
    minimum_score: float = 0.1,
    minimum_iou_threshold: float = 0.1,
    lost_track_buffer: int = 30,
    frame_rate: float = 30.0,
    minimum_consecutive_frames: int = 2,
    per_class: bool = False,
) -> SupervisionTracker:
    """ByteTrack (``trackers.ByteTrackTracker``): Kalman motion, IoU association of the high-score boxes, then
    of the low-score boxes with the tracks left. The reference of ``bytetrack`` (detforge's batched
    implementation, the default: same options, same results, faster).

    Args:
        track_activation_threshold: score a detection needs to start a new track.
        high_conf_det_threshold: boxes scoring at least this are associated first; those below (down to
            ``minimum_score``) only continue tracks the first stage left.
        minimum_score: boxes below this are dropped before tracking (the paper's low threshold, 0.1).
        minimum_iou_threshold: IoU a detection needs with a track's predicted box to continue it.
        lost_track_buffer: frames (at 30 fps) a track survives without a detection.
        frame_rate: the video's frame rate (scales ``lost_track_buffer``).
        minimum_consecutive_frames: frames a new track must be matched in a row before it is reported.
        per_class: associate boxes with tracks of their own class only (see the module docstring).
    """
    options = dict(locals())
    from trackers import ByteTrackTracker

    kwargs = {
        **_common(lost_track_buffer, frame_rate, minimum_consecutive_frames),
        "track_activation_threshold": _fraction("track_activation_threshold", track_activation_threshold),
        "high_conf_det_threshold": _fraction("high_conf_det_threshold", high_conf_det_threshold),
        "minimum_iou_threshold": _fraction("minimum_iou_threshold", minimum_iou_threshold),
    }
    return _build(ByteTrackTracker, kwargs, options, name="bytetrack-roboflow")


@register_tracker("ocsort")
def ocsort(
    *,
    high_conf_det_threshold: float = 0.6,
    minimum_iou_threshold: float = 0.3,
    direction_consistency_weight: float = 0.2,
    delta_t: int = 3,
    lost_track_buffer: int = 30,
    frame_rate: float = 30.0,
    minimum_consecutive_frames: int = 3,
    per_class: bool = False,
) -> SupervisionTracker:
    """OC-SORT (``trackers.OCSORTTracker``): Kalman motion corrected by observations, IoU plus direction
    consistency, a second chance on each track's last observation.

    Args:
        high_conf_det_threshold: only boxes scoring at least this are tracked (the rest are not reported).
        minimum_iou_threshold: IoU a detection needs with a track to continue it.
        direction_consistency_weight: weight of the motion-direction agreement in the association score.
        delta_t: frames back used to estimate a track's direction.
        lost_track_buffer: frames (at 30 fps) a track survives without a detection.
        frame_rate: the video's frame rate (scales ``lost_track_buffer``).
        minimum_consecutive_frames: frames a new track must be matched in a row before it is reported.
        per_class: associate boxes with tracks of their own class only (see the module docstring).
    """
    options = dict(locals())
    from trackers import OCSORTTracker

    kwargs = {
        **_common(lost_track_buffer, frame_rate, minimum_consecutive_frames),
        "high_conf_det_threshold": _fraction("high_conf_det_threshold", high_conf_det_threshold),
        "minimum_iou_threshold": _fraction("minimum_iou_threshold", minimum_iou_threshold),
        "direction_consistency_weight": _positive(
            "direction_consistency_weight", direction_consistency_weight, zero=True
        ),
        "delta_t": _at_least("delta_t", delta_t, 1),
    }
    return _build(OCSORTTracker, kwargs, options)


@register_tracker("botsort")
def botsort(
    *,
    track_activation_threshold: float = 0.7,
    high_conf_det_threshold: float = 0.6,
    minimum_score: float = 0.1,
    minimum_iou_threshold_first_assoc: float = 0.2,
    minimum_iou_threshold_second_assoc: float = 0.5,
    minimum_iou_threshold_unconfirmed_assoc: float = 0.3,
    cmc_method: CMCMethod = "sparseOptFlow",
    cmc_downscale: int = 2,
    lost_track_buffer: int = 30,
    frame_rate: float = 30.0,
    minimum_consecutive_frames: int = 2,
    per_class: bool = False,
) -> SupervisionTracker:
    """BoT-SORT (``trackers.BoTSORTTracker``, no appearance model): ByteTrack's two stages with IoU fused with
    the detection score, and camera-motion compensation from the frame (pass ``image`` to ``update``).
    Tracks started on a sequence's first frame are reported at once.

    Args:
        track_activation_threshold: score a detection needs to start a new track.
        high_conf_det_threshold: boxes scoring at least this are associated first.
        minimum_score: boxes below this are dropped before tracking (the ByteTrack paper's 0.1).
        minimum_iou_threshold_first_assoc, minimum_iou_threshold_second_assoc: fused similarity (IoU x score)
            a match needs in the first (high-score) and second (low-score) stage.
        minimum_iou_threshold_unconfirmed_assoc: fused similarity a new, unconfirmed track needs.
        cmc_method: camera-motion compensation, one of :data:`CMCMethod` (``"none"``: off).
        cmc_downscale: the frame is shrunk by this factor for the motion estimate.
        lost_track_buffer: frames (at 30 fps) a track survives without a detection.
        frame_rate: the video's frame rate (scales ``lost_track_buffer``).
        minimum_consecutive_frames: frames a new track must be matched in a row before it is reported.
        per_class: associate boxes with tracks of their own class only (see the module docstring).
    """
    options = dict(locals())
    from trackers import BoTSORTTracker

    if cmc_method not in get_args(CMCMethod):
        raise InvalidValueError(f"cmc_method must be one of {get_args(CMCMethod)}, got {cmc_method!r}")
    kwargs = {
        **_common(lost_track_buffer, frame_rate, minimum_consecutive_frames),
        "track_activation_threshold": _fraction("track_activation_threshold", track_activation_threshold),
        "high_conf_det_threshold": _fraction("high_conf_det_threshold", high_conf_det_threshold),
        "minimum_iou_threshold_first_assoc": _fraction(
            "minimum_iou_threshold_first_assoc", minimum_iou_threshold_first_assoc
        ),
        "minimum_iou_threshold_second_assoc": _fraction(
            "minimum_iou_threshold_second_assoc", minimum_iou_threshold_second_assoc
        ),
        "minimum_iou_threshold_unconfirmed_assoc": _fraction(
            "minimum_iou_threshold_unconfirmed_assoc", minimum_iou_threshold_unconfirmed_assoc
        ),
        "enable_cmc": cmc_method != "none",
        "cmc_method": "sparseOptFlow" if cmc_method == "none" else cmc_method,
        "cmc_downscale": _at_least("cmc_downscale", cmc_downscale, 1),
    }
    return _build(BoTSORTTracker, kwargs, options, uses_image=cmc_method != "none")


@register_tracker("sort")
def sort(
    *,
    track_activation_threshold: float = 0.25,
    minimum_iou_threshold: float = 0.3,
    lost_track_buffer: int = 30,
    frame_rate: float = 30.0,
    minimum_consecutive_frames: int = 3,
    per_class: bool = False,
) -> SupervisionTracker:
    """SORT (``trackers.SORTTracker``): Kalman motion and IoU association (Bewley et al., 2016).

    Args:
        track_activation_threshold: score a detection needs to start a new track.
        minimum_iou_threshold: IoU a detection needs with a track's predicted box to continue it.
        lost_track_buffer: frames (at 30 fps) a track survives without a detection.
        frame_rate: the video's frame rate (scales ``lost_track_buffer``).
        minimum_consecutive_frames: frames a new track must be matched in a row before it is reported.
        per_class: associate boxes with tracks of their own class only (see the module docstring).
    """
    options = dict(locals())
    from trackers import SORTTracker

    kwargs = {
        **_common(lost_track_buffer, frame_rate, minimum_consecutive_frames),
        "track_activation_threshold": _fraction("track_activation_threshold", track_activation_threshold),
        "minimum_iou_threshold": _fraction("minimum_iou_threshold", minimum_iou_threshold),
    }
    return _build(SORTTracker, kwargs, options)
