"""Tracking for the edge detectors: a GRU memory per object and a batched IoU + appearance tracker.

``TrackMemory`` is the learnable part (a GRU cell and a motion-correction layer, owned by the model so it is
saved with the weights). ``ObjectTracker`` is the stateful part: it keeps every live track's box, velocity,
GRU state, appearance and accumulated confidence as tensors, predicts where each track goes next (constant
velocity + the GRU's correction), matches detections with the Hungarian algorithm on IoU (+ appearance
similarity), and hands out track ids from temporal continuity.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from detforge.boxes import box_iou, convert_boxes

__all__ = ["ObjectTracker", "TrackMemory"]


class TrackMemory(nn.Module):
    """GRU memory of one object per row.

    ``forward(geometry Tensor[N, 8], appearance Tensor[N, E] | None, hidden Tensor[N, H])`` ->
    (new hidden Tensor[N, H], motion correction Tensor[N, 4] in box-size units). ``geometry`` is the box
    (cx, cy, w, h) and its last change, both divided by the image size. The correction starts at zero, so an
    untrained memory predicts constant velocity.
    """

    def __init__(self, *, appearance_size: int = 0, hidden_size: int = 64) -> None:
        super().__init__()
        self.appearance_size = appearance_size
        self.hidden_size = hidden_size
        self.gru = nn.GRUCell(8 + appearance_size, hidden_size)
        self.motion = nn.Linear(hidden_size, 4)
        nn.init.zeros_(self.motion.weight)
        nn.init.zeros_(self.motion.bias)

    def forward(self, geometry: Tensor, appearance: Tensor | None, hidden: Tensor) -> tuple[Tensor, Tensor]:
        x = (
            geometry
            if appearance is None or self.appearance_size == 0
            else torch.cat([geometry, appearance], 1)
        )
        hidden = self.gru(x, hidden)  # [N, H]
        return hidden, self.motion(hidden)  # [N, H], [N, 4]


class ObjectTracker:
    """Tracks detections over the frames of one video.

    Args:
        memory: the model's ``TrackMemory`` (GRU state per track), or None for constant-velocity tracking.
        image_size: (h, w) of the frames, for normalising geometry.
        min_iou: a detection continues a track only if it overlaps the track's predicted box this much.
        appearance_weight: weight of the cosine similarity of appearance vectors in the matching score.
        max_missed: frames a track survives without a detection.
        confidence_decay: how much of a track's accumulated confidence carries to the next frame.
    """

    def __init__(
        self,
        *,
        memory: TrackMemory | None,
        image_size: tuple[int, int],
        min_iou: float = 0.2,
        appearance_weight: float = 0.3,
        max_missed: int = 5,
        confidence_decay: float = 0.9,
    ) -> None:
        self.memory = memory
        self.image_size = image_size
        self.min_iou = min_iou
        self.appearance_weight = appearance_weight
        self.max_missed = max_missed
        self.confidence_decay = confidence_decay
        self.next_id = 1
        hidden = memory.hidden_size if memory is not None else 0
        self.ids = torch.zeros(0, dtype=torch.int64)  # [T]
        self.boxes = torch.zeros(0, 4)  # [T, 4] xyxy, last matched
        self.velocity = torch.zeros(0, 4)  # [T, 4] cxcywh pixels per frame
        self.correction = torch.zeros(0, 4)  # [T, 4] GRU motion correction, box-size units
        self.hidden = torch.zeros(0, hidden)  # [T, H]
        self.appearance: Tensor | None = None  # [T, E]
        self.labels = torch.zeros(0, dtype=torch.int64)  # [T]
        self.confidence = torch.zeros(0)  # [T] accumulated
        self.hits = torch.zeros(0, dtype=torch.int64)  # [T] frames matched
        self.missed = torch.zeros(0, dtype=torch.int64)  # [T] consecutive frames unmatched

    def __len__(self) -> int:
        return int(self.ids.numel())

    def predicted_boxes(self) -> Tensor:
        """Where each live track is expected in the next frame, Tensor[T, 4] xyxy."""
        if len(self) == 0:
            return self.boxes.clone()
        cxcywh = convert_boxes(self.boxes, "xyxy", "cxcywh")  # [T, 4]
        size = cxcywh[:, 2:].repeat(1, 2)  # [T, 4] (w, h, w, h)
        moved = cxcywh + self.velocity * (1 + self.missed[:, None]) + self.correction * size
        moved[:, 2:] = moved[:, 2:].clamp(min=1.0)
        return convert_boxes(moved, "cxcywh", "xyxy")

    def update(
        self, boxes: Tensor, scores: Tensor, labels: Tensor, appearance: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Match one frame's detections to tracks.

        Args:
            boxes: Tensor[N, 4] xyxy pixels. scores: Tensor[N]. labels: Tensor[N] int64.
            appearance: optional Tensor[N, E] appearance vectors.

        Returns:
            track ids Tensor[N] int64 and accumulated confidences Tensor[N].
        """
        boxes, scores, labels = boxes.float().cpu(), scores.float().cpu(), labels.long().cpu()
        if appearance is not None:
            appearance = F.normalize(appearance.float().cpu(), dim=1)
        n, t = boxes.shape[0], len(self)
        det_track = torch.full((n,), -1, dtype=torch.int64)  # which track row each detection continues
        if n and t:
            score = box_iou(self.predicted_boxes(), boxes)  # [T, N]
            valid = (score >= self.min_iou) & (self.labels[:, None] == labels[None, :])
            if appearance is not None and self.appearance is not None:
                score = score + self.appearance_weight * (self.appearance @ appearance.T)  # [T, N]
            rows, cols = linear_sum_assignment(np.where(valid.numpy(), -score.numpy(), 1e6))
            ok = valid.numpy()[rows, cols]
            det_track[torch.as_tensor(cols[ok])] = torch.as_tensor(rows[ok], dtype=torch.int64)

        matched = det_track >= 0
        rows = det_track[matched]
        # update matched tracks
        old = convert_boxes(self.boxes[rows], "xyxy", "cxcywh")  # [M, 4]
        new = convert_boxes(boxes[matched], "xyxy", "cxcywh")  # [M, 4]
        steps = (1 + self.missed[rows])[:, None].float()
        velocity = (new - old) / steps  # [M, 4]
        self.velocity[rows] = 0.5 * self.velocity[rows] + 0.5 * velocity
        self.boxes[rows] = boxes[matched]
        decayed = self.confidence[rows] * self.confidence_decay
        self.confidence[rows] = 1 - (1 - decayed) * (1 - scores[matched])
        self.hits[rows] += 1
        self.missed += 1
        self.missed[rows] = 0
        if appearance is not None and self.appearance is not None:
            self.appearance[rows] = F.normalize(
                0.7 * self.appearance[rows] + 0.3 * appearance[matched], dim=1
            )

        # new tracks for unmatched detections
        fresh = ~matched
        k = int(fresh.sum())
        new_ids = torch.arange(self.next_id, self.next_id + k, dtype=torch.int64)
        self.next_id += k
        det_track[fresh] = torch.arange(t, t + k)
        self.ids = torch.cat([self.ids, new_ids])
        self.boxes = torch.cat([self.boxes, boxes[fresh]])
        self.velocity = torch.cat([self.velocity, torch.zeros(k, 4)])
        self.correction = torch.cat([self.correction, torch.zeros(k, 4)])
        self.hidden = torch.cat([self.hidden, torch.zeros(k, self.hidden.shape[1])])
        self.labels = torch.cat([self.labels, labels[fresh]])
        self.confidence = torch.cat([self.confidence, scores[fresh]])
        self.hits = torch.cat([self.hits, torch.ones(k, dtype=torch.int64)])
        self.missed = torch.cat([self.missed, torch.zeros(k, dtype=torch.int64)])
        if appearance is not None:
            app = appearance[fresh]
            self.appearance = app if self.appearance is None else torch.cat([self.appearance, app])

        self._step_memory(det_track, appearance)
        result_ids, result_conf = self.ids[det_track], self.confidence[det_track]
        self._drop_lost()
        return result_ids, result_conf

    @torch.no_grad()
    def _step_memory(self, det_track: Tensor, appearance: Tensor | None) -> None:
        """Advance the GRU state of every track seen this frame, all at once."""
        if self.memory is None or det_track.numel() == 0:
            return
        h, w = self.image_size
        norm = torch.tensor([w, h, w, h], dtype=torch.float32)
        rows = det_track
        geometry = torch.cat(
            [convert_boxes(self.boxes[rows], "xyxy", "cxcywh") / norm, self.velocity[rows] / norm], dim=1
        )  # [N, 8]
        app = appearance if (appearance is not None and self.memory.appearance_size) else None
        param = next(self.memory.parameters())
        hidden, correction = self.memory(
            geometry.to(param), None if app is None else app.to(param), self.hidden[rows].to(param)
        )
        self.hidden[rows] = hidden.float().cpu()
        self.correction[rows] = correction.float().cpu()

    def _drop_lost(self) -> None:
        keep = self.missed <= self.max_missed
        if bool(keep.all()):
            return
        for name in (
            "ids",
            "boxes",
            "velocity",
            "correction",
            "hidden",
            "labels",
            "confidence",
            "hits",
            "missed",
        ):
            setattr(self, name, getattr(self, name)[keep])
        if self.appearance is not None:
            self.appearance = self.appearance[keep]
