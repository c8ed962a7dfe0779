"""ByteTrack (Zhang et al., ECCV 2022), detforge's own, batched over tracks: registered as ``bytetrack``
(the default tracker).

The algorithm, options, defaults and noise settings are those of Roboflow's ``trackers`` package
(``trackers.ByteTrackTracker``, Apache-2.0; wrapped as ``bytetrack-roboflow`` in
:mod:`detforge.tracking.roboflow`, the reference ``tests/tracking/test_bytetrack.py`` compares with). What
changes is the arithmetic's layout: all tracks' Kalman states are one array ``[T, 8]`` and their
covariances ``[T, 8, 8]``, predicted and updated together (stacked ``matmul`` / ``linalg.inv``, which run
the very BLAS / LAPACK calls the package makes per track, so states agree bit for bit), and the IoU
matrices are computed whole. One frame:

1. **Predict** every track (constant velocity on the box corners ``x1 y1 x2 y2``).
2. **First stage**: the detections scoring at least ``high_conf_det_threshold`` are matched to all tracks by
   Hungarian assignment on IoU with the predicted boxes; a pair needs IoU ``>= minimum_iou_threshold``.
3. **Second stage**: the lower-scoring detections (down to ``minimum_score``) are matched the same way to
   the tracks the first stage left.
4. Matched tracks take their detection (Kalman update); a track matched ``minimum_consecutive_frames``
   frames in a row is confirmed and gets the next id (from 1).
5. High-score detections left unmatched start a new (unconfirmed) track when they score at least
   ``track_activation_threshold``.
6. A track missed more than ``lost_track_buffer`` frames (scaled by ``frame_rate / 30``) ends; an
   unconfirmed track missed once ends.

What it reports is the wrapper's: the *input boxes* (scores, labels) of the detections a confirmed track
took this frame, with ``detection_indices``; unconfirmed tracks and unmatched detections are not reported.
With ``per_class`` each class runs its own tracker and ids stay unique over all classes.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from detforge.tracking.base import Tracker, select_tracks
from detforge.tracking.options import common_options, flag, fraction
from detforge.tracking.registry import register_tracker

__all__ = ["ByteTrack", "bytetrack"]

_I8 = np.eye(8)  # [8, 8]
_R = np.eye(4) * 0.1  # [4, 4] measurement noise (the package's ByteTrack tuning: identity x 0.1)
_Q = 0.01  # process noise: identity x 0.01, [8, 8]


def box_iou(tracks: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of every track box with every detection box, float32 [T, N], as ``supervision.box_iou_batch``
    computes it (float64 arithmetic, rounded to float32; 0 where the union is empty), bit for bit. Large
    matrices are mostly zeros: only the pairs whose x extents may meet are computed there.

    Args:
        tracks: [T, 4] xyxy. boxes: [N, 4] xyxy.
    """
    out = np.zeros((len(tracks), len(boxes)), dtype=np.float32)
    if out.size == 0:
        return out
    a = np.asarray(tracks, dtype=np.float64)  # [T, 4]
    b = np.asarray(boxes, dtype=np.float64)  # [N, 4]
    if out.size < _DENSE_IOU:
        _iou(a.T[:, :, None], b.T[:, None, :], out)  # [4, T, 1] with [4, 1, N]
        return out
    rows, cols = _x_overlaps(a, b)  # [C] each
    values = np.zeros(len(rows), dtype=np.float32)
    _iou(a.T[:, rows], b.T[:, cols], values)  # [4, C] with [4, C]
    out[rows, cols] = values
    return out


_DENSE_IOU = 4096
"""IoU matrices with fewer entries are computed whole; larger ones on the pairs :func:`_x_overlaps` finds."""


def _iou(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """IoU of boxes ``a`` and ``b`` (float64, coordinate first: [4, ...] x1 y1 x2 y2, broadcastable) into
    ``out`` (float32, zeros) with supervision's operations in supervision's order."""
    inter_w = np.maximum(np.minimum(a[2], b[2]) - np.maximum(a[0], b[0]), 0.0)
    inter_h = np.maximum(np.minimum(a[3], b[3]) - np.maximum(a[1], b[1]), 0.0)
    inter = inter_w * inter_h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    np.divide(inter, union, out=out, where=union > 0)


def _x_overlaps(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The (row of ``a`` [C], row of ``b`` [C]) pairs whose boxes may overlap along x, a superset of those
    with IoU > 0 (``a`` [T, 4], ``b`` [N, 4] float64): boxes ``b`` sorted by x1, each ``a`` takes those with
    ``x1`` in (``a.x1`` - the widest ``b``, ``a.x2``)."""
    order = np.argsort(b[:, 0], kind="stable")  # [N]
    x1 = b[order, 0]  # [N] increasing
    reach = float(np.max(b[:, 2] - b[:, 0]))
    margin = 1e-6 * (np.abs(a[:, 0]) + abs(reach)) + 1e-9  # [T] for rounding in a.x1 - reach
    lo = np.searchsorted(x1, a[:, 0] - reach - margin, side="left")  # [T]
    hi = np.searchsorted(x1, a[:, 2], side="left")  # [T] b.x1 < a.x2
    count = np.maximum(hi - lo, 0)  # [T]
    rows = np.repeat(np.arange(len(a)), count)  # [C]
    within = np.arange(len(rows)) - np.repeat(np.cumsum(count) - count, count)  # [C] 0 .. count - 1
    return rows, order[np.repeat(lo, count) + within]


def associate(iou: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Hungarian assignment maximising the total IoU (``iou`` float32 [T, N]); the pairs with IoU
    ``>= threshold`` as (rows [M], cols [M]) int64, by row. Compared in float32, as the package's
    ``np.float32 >= float`` does under NumPy 2's promotion rules (``trackers`` needs NumPy >= 2)."""
    if iou.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(iou, maximize=True)  # [min(T, N)] each, rows increasing
    keep = iou[rows, cols] >= np.float32(threshold)
    return rows[keep].astype(np.int64), cols[keep].astype(np.int64)


def _unmatched(count: int, matched: np.ndarray) -> np.ndarray:
    """0 .. count - 1 without ``matched``, increasing, int64."""
    free = np.ones(count, dtype=bool)
    free[matched] = False
    return np.flatnonzero(free)


class _Tracks:
    """The tracks of one ByteTrack (all classes, or one with ``per_class``), one row per track."""

    def __init__(self) -> None:
        self.x = np.zeros((0, 8))  # [T, 8] Kalman state x1 y1 x2 y2 and their velocities
        self.P = np.zeros((0, 8, 8))  # [T, 8, 8] state covariance
        self.ids = np.zeros(0, dtype=np.int64)  # [T] detforge id, -1 while unconfirmed
        self.streak = np.zeros(0, dtype=np.int64)  # [T] frames matched in a row
        self.missed = np.zeros(0, dtype=np.int64)  # [T] frames since the last match

    def __len__(self) -> int:
        return len(self.ids)

    def predict(self) -> None:
        """One constant-velocity step for every track: x <- F x, P <- F P F^T + Q with F = [[I, I], [0, I]]
        (sums of two terms each: exact, so equal to the package's matrix products)."""
        self.x[:, :4] += self.x[:, 4:]
        self.P[:, :4] += self.P[:, 4:]  # F P
        self.P[:, :, :4] += self.P[:, :, 4:]  # (F P) F^T
        np.einsum("tii->ti", self.P)[...] += _Q  # [T, 8] view of the diagonals
        self.streak[self.missed > 0] = 0  # a miss breaks the streak
        self.missed += 1

    def update(self, rows: np.ndarray, boxes: np.ndarray) -> None:
        """Kalman update of tracks ``rows`` ([M] int64, distinct) with the detections ``boxes`` ([M, 4]
        float32), in the package's order of operations (gain through the inverse, Joseph-form covariance)."""
        x, P = self.x[rows], self.P[rows]  # [M, 8], [M, 8, 8]
        gain = np.ascontiguousarray(P[:, :, :4]) @ np.linalg.inv(P[:, :4, :4] + _R)  # [M, 8, 4] P H^T S^-1
        innovation = (boxes.astype(np.float64) - x[:, :4])[:, :, None]  # [M, 4, 1] z - H x
        self.x[rows] = x + (gain @ innovation)[:, :, 0]
        i_kh = np.repeat(_I8[None], len(rows), axis=0)  # [M, 8, 8] I - K H
        i_kh[:, :, :4] -= gain
        self.P[rows] = i_kh @ P @ i_kh.transpose(0, 2, 1) + (gain @ _R) @ gain.transpose(0, 2, 1)
        self.missed[rows] = 0
        self.streak[rows] += 1

    def add(self, boxes: np.ndarray) -> None:
        """New unconfirmed tracks at ``boxes`` ([K, 4] float32): zero velocity, covariance I, streak 1."""
        k = len(boxes)
        x = np.zeros((k, 8))  # [K, 8]
        x[:, :4] = boxes
        self.x = np.concatenate([self.x, x])
        self.P = np.concatenate([self.P, np.repeat(_I8[None], k, axis=0)])
        self.ids = np.concatenate([self.ids, np.full(k, -1, dtype=np.int64)])
        self.streak = np.concatenate([self.streak, np.ones(k, dtype=np.int64)])
        self.missed = np.concatenate([self.missed, np.zeros(k, dtype=np.int64)])

    def keep(self, alive: np.ndarray) -> None:
        """Keep the tracks where ``alive`` ([T] bool), in their order."""
        if not alive.all():
            for name in ("x", "P", "ids", "streak", "missed"):
                setattr(self, name, getattr(self, name)[alive])


class ByteTrack(Tracker):
    """ByteTrack with batched Kalman filters; see the module docstring and :func:`bytetrack` for the options
    (checked there: build it with ``create_tracker("bytetrack", ...)``)."""

    name = "bytetrack"

    def __init__(
        self,
        *,
        track_activation_threshold: float = 0.7,
        high_conf_det_threshold: float = 0.6,
        minimum_score: float = 0.1,
        minimum_iou_threshold: float = 0.1,
        second_iou_threshold: float | None = 0.5,
        second_stage_lost: bool = False,
        lost_track_buffer: int = 30,
        frame_rate: float = 30.0,
        minimum_consecutive_frames: int = 2,
        per_class: bool = False,
    ) -> None:
        self.options = {
            "second_iou_threshold": second_iou_threshold,
            "second_stage_lost": second_stage_lost,
            "track_activation_threshold": track_activation_threshold,
            "high_conf_det_threshold": high_conf_det_threshold,
            "minimum_score": minimum_score,
            "minimum_iou_threshold": minimum_iou_threshold,
            "lost_track_buffer": lost_track_buffer,
            "frame_rate": frame_rate,
            "minimum_consecutive_frames": minimum_consecutive_frames,
            "per_class": per_class,
        }
        self.track_activation_threshold = float(track_activation_threshold)
        self.high_conf_det_threshold = float(high_conf_det_threshold)
        self.minimum_score = float(minimum_score)
        self.minimum_iou_threshold = float(minimum_iou_threshold)
        self.second_iou_threshold = (
            self.minimum_iou_threshold if second_iou_threshold is None else float(second_iou_threshold)
        )
        self.second_stage_lost = bool(second_stage_lost)
        self.minimum_consecutive_frames = int(minimum_consecutive_frames)
        self.per_class = bool(per_class)
        scaled = float(frame_rate) / 30.0 * lost_track_buffer  # the package's scaling: at least 1 unless 0
        self.maximum_frames_without_update = 0 if lost_track_buffer == 0 else max(1, math.ceil(scaled))
        self.reset()

    def reset(self) -> None:
        self._tracks: dict[int | None, _Tracks] = {}  # class (None: all classes) -> its tracks
        self._next_id = 1

    def __repr__(self) -> str:
        return f"{self.name}({', '.join(f'{k}={v!r}' for k, v in self.options.items())})"

    def _update(self, detections: dict[str, Any], image: np.ndarray | None) -> dict[str, Tensor]:
        boxes = detections["boxes"].numpy(force=True)  # [N, 4] float32
        scores = detections["scores"].numpy(force=True)  # [N] float32
        rows = np.flatnonzero(scores >= np.float32(self.minimum_score))  # [K] rows that enter tracking
        if self.per_class:  # classes with tracks first (absent ones age), then new ones by class id
            labels = detections["labels"].numpy(force=True)[rows]  # [K]
            groups: dict[int | None, np.ndarray] = {c: rows[:0] for c in self._tracks}
            for c in np.unique(labels).tolist():
                groups[c] = rows[labels == c]
        else:
            groups = {None: rows}
        found_rows, found_ids = [], []
        for key, group in groups.items():
            tracks = self._tracks.get(key)
            if tracks is None:
                tracks = self._tracks[key] = _Tracks()
            local, ids = self._step(tracks, boxes[group], scores[group])
            found_rows.append(group[local])
            found_ids.append(ids)
        rows_out = np.concatenate(found_rows) if found_rows else np.zeros(0, dtype=np.int64)
        ids_out = np.concatenate(found_ids) if found_ids else np.zeros(0, dtype=np.int64)
        return select_tracks(detections, torch.from_numpy(rows_out), torch.from_numpy(ids_out))

    def _step(self, tracks: _Tracks, boxes: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One frame for one group's ``tracks``: ``boxes`` [K, 4] float32, ``scores`` [K] float32 (above
        ``minimum_score``). Returns the detections reported ([M] int64 rows of ``boxes``) and their ids."""
        empty = np.zeros(0, dtype=np.int64)
        if len(tracks) == 0 and len(boxes) == 0:
            return empty, empty
        tracks.predict()
        predicted = tracks.x[:, :4]  # [T, 4]
        high = scores >= np.float32(self.high_conf_det_threshold)  # [K]
        high_rows, low_rows = np.flatnonzero(high), np.flatnonzero(~high)  # [H], [L]

        # first stage: high-score detections with every track
        t1, d1 = associate(box_iou(predicted, boxes[high_rows]), self.minimum_iou_threshold)
        left = _unmatched(len(tracks), t1)  # [T'] tracks the first stage left
        if not self.second_stage_lost:  # the paper: only tracks matched in the previous frame (missed 1 now)
            left = left[tracks.missed[left] == 1]
        # second stage: low-score detections with those
        t2, d2 = associate(box_iou(predicted[left], boxes[low_rows]), self.second_iou_threshold)
        track_rows = np.concatenate([t1, left[t2]])  # [M] first stage's matches, then the second's
        det_rows = np.concatenate([high_rows[d1], low_rows[d2]])  # [M]
        new_high = high_rows[_unmatched(len(high_rows), d1)]  # [H'] unmatched high-score detections

        if len(track_rows):
            tracks.update(track_rows, boxes[det_rows])
            fresh = track_rows[
                (tracks.ids[track_rows] == -1)
                & (tracks.streak[track_rows] >= self.minimum_consecutive_frames)
            ]  # [F] confirmed now, numbered in match order
            tracks.ids[fresh] = np.arange(self._next_id, self._next_id + len(fresh))
            self._next_id += len(fresh)
        ids = tracks.ids[track_rows]  # [M]
        reported = ids >= 0

        # new tracks (the package compares the float32 score with the threshold in float64)
        start = new_high[scores[new_high].astype(np.float64) >= self.track_activation_threshold]
        if len(start):
            tracks.add(boxes[start])
        tracks.keep(
            (tracks.missed <= self.maximum_frames_without_update)
            & ((tracks.ids >= 0) | (tracks.streak >= self.minimum_consecutive_frames) | (tracks.missed == 0))
        )
        return det_rows[reported], ids[reported]


@register_tracker("bytetrack")
def bytetrack(
    *,
    track_activation_threshold: float = 0.7,
    high_conf_det_threshold: float = 0.6,
    minimum_score: float = 0.1,
    minimum_iou_threshold: float = 0.1,
    second_iou_threshold: float | None = 0.5,
    second_stage_lost: bool = False,
    lost_track_buffer: int = 30,
    frame_rate: float = 30.0,
    minimum_consecutive_frames: int = 2,
    per_class: bool = False,
) -> ByteTrack:
    """ByteTrack (detforge's batched implementation; ``bytetrack-roboflow`` is the ``trackers`` package's,
    with the same options and results): Kalman motion, IoU association of the high-score boxes, then of the
    low-score boxes with the tracks left.

    Args:
        track_activation_threshold: score a detection needs to start a new track.
        high_conf_det_threshold: boxes scoring at least this are associated first; those below (down to
            ``minimum_score``) only continue tracks the first stage left.
        minimum_score: boxes below this are dropped before tracking (the paper's low threshold, 0.1).
        minimum_iou_threshold: IoU a detection needs with a track's predicted box to continue it (first
            stage).
        second_iou_threshold: IoU a low-score detection needs to continue a track (second stage); the
            paper's 0.5 (a low-score box is trusted only where it overlaps well); None: ``minimum_iou_threshold``
            as the ``trackers`` package does.
        second_stage_lost: offer the second stage every track the first left, lost ones included (the
            ``trackers`` package); False (the paper): only the tracks matched in the previous frame, so a
            low-score box near where a lost object was is not taken for it.
        lost_track_buffer: frames (at 30 fps) a track survives without a detection.
        frame_rate: the video's frame rate (scales ``lost_track_buffer``).
        minimum_consecutive_frames: frames a new track must be matched in a row before it is reported.
        per_class: associate boxes with tracks of their own class only (one tracker per class).
    """
    return ByteTrack(
        **common_options(lost_track_buffer, frame_rate, minimum_consecutive_frames),
        track_activation_threshold=fraction("track_activation_threshold", track_activation_threshold),
        high_conf_det_threshold=fraction("high_conf_det_threshold", high_conf_det_threshold),
        minimum_score=fraction("minimum_score", minimum_score),
        minimum_iou_threshold=fraction("minimum_iou_threshold", minimum_iou_threshold),
        second_iou_threshold=None
        if second_iou_threshold is None
        else fraction("second_iou_threshold", second_iou_threshold),
        second_stage_lost=flag("second_stage_lost", second_stage_lost),
        per_class=flag("per_class", per_class),
    )
