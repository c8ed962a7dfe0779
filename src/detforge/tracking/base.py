"""The tracker protocol: :class:`Tracker`, the base class of every detforge multi-object tracker.

A tracker takes one frame's detections at a time, in the detector protocol's dict, and returns the boxes it
reports for that frame with an identity each::

    tracker = create_tracker("bytetrack")
    for frame, dets in video:             # dets = model's prediction dict for the frame
        tracks = tracker.update(dets, frame)
        tracks["boxes"], tracks["track_ids"]
    tracker.reset()                        # next video: ids start at 1 again

Input ``detections`` (one frame):

- ``boxes`` (Tensor[N, 4]): xyxy, pixels, any float dtype;
- ``scores`` (Tensor[N]): confidences in [0, 1];
- ``labels`` (Tensor[N]): int64 class ids;
- other keys are allowed; most trackers ignore them (the ``memory`` tracker reads ``embeddings``).

Output (the M boxes reported this frame, on the input boxes' device):

- ``boxes`` (Tensor[M, 4] float32), ``scores`` (Tensor[M] float32), ``labels`` (Tensor[M] int64);
- ``track_ids`` (Tensor[M] int64): >= 1, unique within a sequence, never reused after a track ends;
- ``detection_indices`` (Tensor[M] int64): the row of each reported box in the input, so a caller can carry
  its own per-detection values (masks, log-variances) along. Rows come in increasing order.

``image`` (Tensor[C, H, W] uint8 or float in [0, 1], or np.ndarray[H, W, 3] uint8 RGB) is the frame, for
trackers that look at it (BoT-SORT's camera-motion compensation); the others ignore it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from detforge.errors import InvalidValueError

__all__ = ["TRACK_KEYS", "Tracker", "check_detections", "empty_tracks", "image_to_numpy", "select_tracks"]

TRACK_KEYS = ("boxes", "scores", "labels", "track_ids", "detection_indices")
"""The keys of :meth:`Tracker.update`'s result."""


class Tracker(ABC):
    """A stateful multi-object tracker over the frames of one sequence (see the module docstring).

    Subclasses implement :meth:`_update` (validated CPU-side inputs) and :meth:`reset`;
    :meth:`update` validates the input and moves the result to the input's device.
    """

    uses_image: bool = False
    """Whether :meth:`update` looks at ``image`` (BoT-SORT's camera-motion compensation)."""

    def update(
        self, detections: Mapping[str, Any], image: Tensor | np.ndarray | None = None
    ) -> dict[str, Tensor]:
        """Associate one frame's detections with the tracks of the sequence.

        Args:
            detections: ``boxes`` Tensor[N, 4] xyxy pixels, ``scores`` Tensor[N], ``labels`` Tensor[N] int64
                (N may be 0); other keys are ignored unless a tracker documents them.
            image: the frame, Tensor[C, H, W] (uint8, or float in [0, 1]) or np.ndarray[H, W, 3] uint8 RGB;
                only trackers with ``uses_image`` read it.

        Returns:
            ``boxes`` Tensor[M, 4] float32, ``scores`` Tensor[M] float32, ``labels`` Tensor[M] int64,
            ``track_ids`` Tensor[M] int64 (>= 1) and ``detection_indices`` Tensor[M] int64 (input rows,
            increasing), on the device of ``detections["boxes"]``.
        """
        boxes, scores, labels = check_detections(detections)
        device = boxes.device
        out = self._update(
            {**detections, "boxes": boxes.cpu(), "scores": scores.cpu(), "labels": labels.cpu()},
            image_to_numpy(image) if self.uses_image and image is not None else None,
        )
        return {k: out[k].to(device) for k in TRACK_KEYS}

    @abstractmethod
    def _update(self, detections: dict[str, Any], image: np.ndarray | None) -> dict[str, Tensor]:
        """:meth:`update` on checked CPU tensors: ``boxes`` float32 [N, 4], ``scores`` float32 [N], ``labels``
        int64 [N] (plus the caller's other keys); ``image`` np.ndarray[H, W, 3] uint8 RGB or None. Returns
        the :data:`TRACK_KEYS` (e.g. through :func:`select_tracks`)."""

    @abstractmethod
    def reset(self) -> None:
        """Forget every track: the next :meth:`update` starts a new sequence, with ids from 1 again."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def check_detections(detections: Mapping[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
    """``boxes`` (float32 [N, 4]), ``scores`` (float32 [N]) and ``labels`` (int64 [N]) of a detection dict,
    on the boxes' device; :class:`~detforge.errors.InvalidValueError` naming the key at fault for a missing
    key, a wrong shape, a non-finite box or score, or float labels."""
    if not isinstance(detections, Mapping):
        raise InvalidValueError(
            f"tracker.update takes a dict with boxes, scores and labels, got {type(detections).__name__}"
        )
    missing = [k for k in ("boxes", "scores", "labels") if k not in detections]
    if missing:
        raise InvalidValueError(
            f"tracker.update: detections lack {', '.join(missing)} (keys given: {', '.join(map(str, detections))});"
            " expected boxes Tensor[N, 4] xyxy pixels, scores Tensor[N], labels Tensor[N] int64"
        )
    boxes, scores, labels = (_as_tensor(k, detections[k]) for k in ("boxes", "scores", "labels"))
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise InvalidValueError(
            f"tracker.update: boxes must be Tensor[N, 4] xyxy, got shape {tuple(boxes.shape)}"
        )
    n = boxes.shape[0]
    for key, value in (("scores", scores), ("labels", labels)):
        if value.shape != (n,):
            raise InvalidValueError(
                f"tracker.update: {key} must be Tensor[N] with N = {n} (the boxes' count), "
                f"got shape {tuple(value.shape)}"
            )
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise InvalidValueError(f"tracker.update: labels must be integer class ids, got {labels.dtype}")
    boxes, scores = boxes.float(), scores.float().to(boxes.device)
    if n and not (_all_finite(boxes) and _all_finite(scores)):
        raise InvalidValueError("tracker.update: boxes and scores must be finite (found NaN or inf)")
    return boxes, scores, labels.long().to(boxes.device)


def _all_finite(values: Tensor) -> bool:
    """Whether a float tensor holds no NaN or inf; through numpy on the CPU (a few microseconds, where
    ``torch.isfinite(...).all()`` takes about 12 on a small tensor: a visible share of a tracker's frame)."""
    if values.device.type == "cpu":
        return bool(np.isfinite(values.numpy(force=True)).all())
    return bool(torch.isfinite(values).all())


def _as_tensor(key: str, value: Any) -> Tensor:
    if isinstance(value, Tensor):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    raise InvalidValueError(f"tracker.update: {key} must be a Tensor, got {type(value).__name__}")


def empty_tracks() -> dict[str, Tensor]:
    """The result of a frame that reports nothing: every :data:`TRACK_KEYS` entry with M = 0, on the CPU."""
    return {
        "boxes": torch.zeros(0, 4),
        "scores": torch.zeros(0),
        "labels": torch.zeros(0, dtype=torch.int64),
        "track_ids": torch.zeros(0, dtype=torch.int64),
        "detection_indices": torch.zeros(0, dtype=torch.int64),
    }


def select_tracks(detections: Mapping[str, Tensor], indices: Tensor, track_ids: Tensor) -> dict[str, Tensor]:
    """The reported boxes: the input detections at rows ``indices`` (Tensor[M] int64) with ``track_ids``
    (Tensor[M] int64), sorted by input row.

    Args:
        detections: checked CPU tensors (``boxes`` [N, 4] float32, ``scores`` [N], ``labels`` [N] int64).
        indices: input rows of the reported boxes, any order, no repeats.
        track_ids: the id of each, >= 1.
    """
    if indices.numel() == 0:
        return empty_tracks()
    rows = indices.long().numpy(force=True)  # [M]; numpy indexing: cheaper than torch's on a few rows
    order = np.argsort(rows, kind="stable")
    rows = rows[order]

    def pick(key: str) -> Tensor:
        return torch.from_numpy(detections[key].numpy(force=True)[rows])

    return {
        "boxes": pick("boxes").float(),
        "scores": pick("scores").float(),
        "labels": pick("labels").long(),
        "track_ids": torch.from_numpy(track_ids.long().numpy(force=True)[order]),
        "detection_indices": torch.from_numpy(rows),
    }


def image_to_numpy(image: Tensor | np.ndarray) -> np.ndarray:
    """A frame as np.ndarray[H, W, 3] uint8 RGB (contiguous).

    Args:
        image: Tensor[C, H, W] with C = 1 or 3, uint8 or float in [0, 1]; or np.ndarray[H, W, 3] (or [H, W])
            uint8 RGB.
    """
    if isinstance(image, Tensor):
        if image.ndim != 3 or image.shape[0] not in (1, 3):
            raise InvalidValueError(
                f"tracker.update: image must be Tensor[C, H, W] with C = 1 or 3, got shape {tuple(image.shape)}"
            )
        x = image.detach()
        if x.is_floating_point():
            x = (x.float().clamp(0, 1) * 255).round()
        array = x.to(torch.uint8).cpu().permute(1, 2, 0).numpy()  # [H, W, C]
    elif isinstance(image, np.ndarray):
        array = image[..., None] if image.ndim == 2 else image
        if array.ndim != 3 or array.shape[2] not in (1, 3):
            raise InvalidValueError(
                f"tracker.update: image must be np.ndarray[H, W, 3] RGB, got shape {image.shape}"
            )
        if array.dtype != np.uint8:
            raise InvalidValueError(f"tracker.update: an np.ndarray image must be uint8, got {array.dtype}")
    else:
        raise InvalidValueError(
            f"tracker.update: image must be a Tensor or np.ndarray, got {type(image).__name__}"
        )
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    return np.ascontiguousarray(array)
