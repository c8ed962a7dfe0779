"""detforge's detection / track dicts <-> ``supervision.Detections`` (what Roboflow's ``trackers`` and
supervision's annotators take), in one place.

``supervision`` is imported when a function here runs, not when this module is imported.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["INDEX_KEY", "from_sv_detections", "to_sv_detections", "tracked_rows"]

INDEX_KEY = "detforge_index"
"""The ``sv.Detections.data`` entry holding each detection's row in detforge's input dict: a tracker may
reorder, drop or subset its input, and this maps its output back to the input boxes exactly."""


def to_sv_detections(detections: Mapping[str, Tensor], rows: Tensor | None = None) -> Any:
    """``sv.Detections`` of detforge detections (all of them, or the input rows ``rows``).

    Args:
        detections: ``boxes`` Tensor[N, 4] xyxy pixels, ``scores`` Tensor[N], ``labels`` Tensor[N] int64, and
            optionally ``track_ids`` Tensor[N] int64.
        rows: Tensor[K] int64 rows to convert, or None for all.

    Returns:
        ``sv.Detections`` with ``xyxy`` float32 [K, 4], ``confidence`` float32 [K], ``class_id`` int64 [K],
        ``tracker_id`` (when the input has ``track_ids``) and ``data[INDEX_KEY]`` int64 [K] (the input rows).
    """
    import supervision as sv

    n = int(detections["boxes"].shape[0])
    index = torch.arange(n) if rows is None else rows.cpu().long()  # [K]
    boxes = detections["boxes"].detach().cpu().float()[index]  # [K, 4]
    scores = detections["scores"].detach().cpu().float()[index]  # [K]
    labels = detections["labels"].detach().cpu().long()[index]  # [K]
    result = sv.Detections(
        xyxy=boxes.numpy().reshape(-1, 4),
        confidence=scores.numpy(),
        class_id=labels.numpy(),
        data={INDEX_KEY: index.numpy()},
    )
    if "track_ids" in detections:
        result.tracker_id = detections["track_ids"].detach().cpu().long()[index].numpy()
    return result


def tracked_rows(result: Any) -> tuple[Tensor, Tensor]:
    """The input rows (Tensor[M] int64) and tracker ids (Tensor[M] int64, as the tracker numbers them) of the
    detections a ``trackers`` tracker confirmed this frame: rows whose ``tracker_id`` is -1 (a detection no
    confirmed track took: unconfirmed, low-score or unmatched) are left out. ``result`` is the
    ``sv.Detections`` its ``update`` returned for input made by :func:`to_sv_detections`."""
    tracker_id = result.tracker_id
    if len(result) == 0 or tracker_id is None:
        empty = torch.zeros(0, dtype=torch.int64)
        return empty, empty.clone()
    ids = np.asarray(tracker_id, dtype=np.int64)  # [K]
    keep = ids >= 0
    rows = np.asarray(result.data[INDEX_KEY], dtype=np.int64)[keep]
    return torch.from_numpy(rows.copy()), torch.from_numpy(ids[keep].copy())


def from_sv_detections(detections: Any) -> dict[str, Tensor]:
    """detforge's dict of an ``sv.Detections``: ``boxes`` float32 [N, 4], ``scores`` float32 [N] (1 where it
    has no confidence), ``labels`` int64 [N] (0 where it has no class ids) and ``track_ids`` int64 [N] when
    it has tracker ids."""
    n = len(detections)
    out = {
        "boxes": torch.as_tensor(np.asarray(detections.xyxy, dtype=np.float32).reshape(n, 4)),
        "scores": torch.ones(n)
        if detections.confidence is None
        else torch.as_tensor(np.asarray(detections.confidence, dtype=np.float32)),
        "labels": torch.zeros(n, dtype=torch.int64)
        if detections.class_id is None
        else torch.as_tensor(np.asarray(detections.class_id, dtype=np.int64)),
    }
    if detections.tracker_id is not None:
        out["track_ids"] = torch.as_tensor(np.asarray(detections.tracker_id, dtype=np.int64))
    return out
