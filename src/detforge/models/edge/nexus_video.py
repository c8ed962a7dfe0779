"""Nexus on video: predictive-coding gate, cached head outputs, object memory and tracking.

Predictive coding: ``FeaturePredictor`` (part of ``Nexus``) guesses the next frame's stem features and
``surprise_map`` measures how wrong the guess was. Each frame runs the cheap stem; the surprise of its
features (worst cell) decides whether the streams and heads run again or the previous frame's outputs are reused. Work per frame is counted in FLOPs
(``torch.utils.flop_counter``, measured once per input size) so the saving on a static scene is a number.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision.ops import roi_align

from detforge.models.edge.common import ConvBNAct
from detforge.models.edge.tracker import ObjectTracker

__all__ = ["FeaturePredictor", "NexusVideo", "VideoProfile", "surprise_map"]


class FeaturePredictor(nn.Module):
    """Predicts the next frame's stem features from the current ones: ``f + delta(f)``.

    The delta's last layer starts at zero, so an untrained predictor expects a static scene; trained on
    frame pairs (``Nexus.predictive_loss``) it learns typical motion. ``forward(Tensor[B, S, h, w])`` keeps
    the shape.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.delta = nn.Sequential(
            ConvBNAct(channels, channels, kernel_size=3, groups=channels),
            nn.Conv2d(channels, channels, kernel_size=1),
        )
        nn.init.zeros_(self.delta[-1].weight)
        nn.init.zeros_(self.delta[-1].bias)

    def forward(self, stem: Tensor) -> Tensor:
        return stem + self.delta(stem)


def surprise_map(stem: Tensor, predicted: Tensor) -> Tensor:
    """Prediction error of the stem features, relative to their mean magnitude, pooled over 8 x 8 stem cells.

    Args:
        stem, predicted: Tensor[B, S, H/4, W/4].

    Returns:
        Tensor[B, 1, H/32, W/32]; 0 for a perfectly predicted frame, about 1 for an unrelated one.
    """
    error = (stem - predicted).abs().mean(dim=1, keepdim=True)  # [B, 1, H/4, W/4]
    scale = stem.abs().mean(dim=(1, 2, 3), keepdim=True) + 1e-6  # [B, 1, 1, 1]
    return F.avg_pool2d(error, 8, ceil_mode=True) / scale


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
