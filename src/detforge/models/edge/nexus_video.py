"""Nexus on video: predictive-coding gate, cached head outputs, object memory and tracking.

Each frame runs the cheap stem. Its features are compared with what the predictor expected from the last
frame; the surprise (``nexus.surprise_map``, worst cell) decides whether the
streams and heads run again or the previous frame's outputs are reused. Work per frame is counted in FLOPs
(``torch.utils.flop_counter``, measured once per input size) so the saving on a static scene is a number.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode
from torchvision.ops import roi_align

from detforge.models.edge.nexus import surprise_map
from detforge.models.edge.tracker import ObjectTracker

__all__ = ["NexusVideo", "VideoProfile"]


@dataclass
class VideoProfile:
    """Work done per frame, as a fraction of a full forward pass (FLOPs), and which frames were skipped."""

    fractions: list[float] = field(default_factory=list)
    surprises: list[float] = field(default_factory=list)
    skipped: list[bool] = field(default_factory=list)


def _flops(fn, *args) -> int:
    with FlopCounterMode(display=False) as counter:
        fn(*args)
    return int(counter.get_total_flops())


class NexusVideo:
    """Stateful per-video runner around a ``Nexus`` model (``Nexus.detect`` creates one)."""

    def __init__(self, model) -> None:
        self.model = model
        self.tracker: ObjectTracker | None = None
        self.predicted: Tensor | None = None  # [1, S, H/4, W/4] expected stem features of the next frame
        self.cached: dict | None = None
        self.cached_dets: dict | None = None
        self.profile = VideoProfile()
        self._cost: dict[tuple[int, int], tuple[float, float]] = {}

    def _costs(self, x: Tensor) -> tuple[float, float]:
        """(cost of stem + predictor, cost of everything) in FLOPs for this input size."""
        key = tuple(x.shape[-2:])
        if key not in self._cost:
            m = self.model
            stem = m.stem(x)
            cheap = _flops(m.stem, x) + _flops(m.predictor, stem)
            full = cheap + _flops(m.heads_from_stem, stem)
            self._cost[key] = (float(cheap), float(full))
        return self._cost[key]

    @torch.no_grad()
    def step(self, frame: Tensor) -> list[dict]:
        m = self.model
        x = frame if frame.ndim == 4 else frame[None]  # [1, C, H, W]
        if x.shape[0] != 1:
            raise ValueError(f"Nexus.detect takes one frame, got a batch of {x.shape[0]}")
        x = x.to(next(m.parameters()))
        h, w = x.shape[-2:]
        was_training = m.training
        m.eval()
        try:
            cheap, full = self._costs(x)
            stem = m.stem(x)  # [1, S, H/4, W/4]
            surprise = float("inf")
            if self.predicted is not None and self.predicted.shape == stem.shape:
                surprise = float(surprise_map(stem, self.predicted).max())
            skip = self.cached is not None and surprise < m.surprise_threshold
            if not skip:
                self.cached = m.heads_from_stem(stem)
                self.cached_dets = m.postprocess(self.cached, [(h, w)])[0]
            self.predicted = m.predictor(stem)
            dets = self.cached_dets
            self.profile.fractions.append(cheap / full if skip else 1.0)
            self.profile.surprises.append(surprise)
            self.profile.skipped.append(skip)

            if self.tracker is None:
                self.tracker = ObjectTracker(memory=m.memory, image_size=(int(h), int(w)))
            appearance = None
            if dets["boxes"].shape[0]:
                rois = torch.cat(
                    [dets["boxes"].new_zeros(len(dets["boxes"]), 1), dets["boxes"]], dim=1
                )  # [N, 5]
                pooled = roi_align(self.cached["p3"], rois, output_size=2, spatial_scale=1 / 8, aligned=True)
                appearance = pooled.mean(dim=(2, 3))  # [N, channels]
            ids, _ = self.tracker.update(dets["boxes"], dets["scores"], dets["labels"], appearance)
        finally:
            m.train(was_training)
        return [
            {
                "bbox": [float(v) for v in box],
                "confidence": float(score),
                "class_id": int(label),
                "track_id": int(tid),
                "bbox_log_var": [float(v) for v in lv],
            }
            for box, score, label, tid, lv in zip(
                dets["boxes"], dets["scores"], dets["labels"], ids, dets["box_log_var"], strict=True
            )
        ]
