"""Phantom on video: pseudo-events, sparse recomputation of the output maps, face tracking.

Per frame:

1. Pseudo-events: pixels whose absolute difference to the previous frame (mean over channels) exceeds
   ``event_threshold``; a ``tile`` x ``tile`` pixel tile with at least ``min_tile_events`` of them is active.
2. Sparse processing: on frame 1, every ``refresh_interval`` frames, or when more than
   ``max_sparse_fraction`` of the frame would need work, the network runs on the whole frame. Otherwise
   each connected group of active tiles becomes a crop with a ``halo`` of context; crops that overlap are
   merged when their bounding crop costs no more pixels than the two apart (one network call instead of
   two). The network runs on each crop and the crop's inner cells (the tiles, without the halo) replace
   those of the cached output maps. Tiles and halo are multiples of the network's total stride (``align``,
   4 for ``PhantomNet``), so every crop starts on the grid of the full frame and its cells are the full
   frame's cells. A frame without active tiles runs no network at all.
3. Decoding on the cached maps: the 3 x 3 local maxima above the threshold, picked in numpy, their boxes from
   Phantom's coder and the shared ``detforge.postprocess.detect`` (NMS, clipping).
4. Tracking (the ``memory`` tracker, :class:`~detforge.tracking.memory.MemoryTracker`, with the model's GRU
   memory): ids from temporal continuity and confidence accumulated over the track; a face is reported once
   its accumulated confidence reaches ``detection_threshold``, with that confidence as its score.

The network is any callable ``numpy [1, C, h, w] float32 -> (cls [1, 1, h/4, w/4], deltas [1, 4, h/4, w/4])``:
``torch_network(model.net)`` or an onnxruntime session (``detforge.models.edge.onnx.ort_network``). Work per
frame is the number of input pixels the network ran on divided by the frame's pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import ndimage

from detforge.boxes import centre_size_to_xyxy
from detforge.models.edge.tracker import TrackMemory
from detforge.postprocess import detect
from detforge.tracking import Tracker, create_tracker

__all__ = ["FrameProfile", "PhantomVideo", "decode_face_maps", "merge_crops", "torch_network"]

Network = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
Crop = tuple[int, int, int, int]  # (y0, y1, x0, x1) pixels


def torch_network(net: torch.nn.Module) -> Network:
    """Wrap a ``PhantomNet`` as a numpy-in, numpy-out callable (eval mode, no grad)."""
    net.eval()
    param = next(net.parameters())

    def run(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            cls, deltas = net(torch.from_numpy(x).to(param))
        return cls.float().cpu().numpy(), deltas.float().cpu().numpy()

    return run


@dataclass
class FrameProfile:
    """Per frame: fraction of a full-frame network pass spent, event-active pixel fraction, mode, network
    calls."""

    fractions: list[float] = field(default_factory=list)
    event_fractions: list[float] = field(default_factory=list)
    modes: list[str] = field(default_factory=list)  # "full", "sparse" or "skip"
    calls: list[int] = field(default_factory=list)


def _area(crop: Crop) -> int:
    return (crop[1] - crop[0]) * (crop[3] - crop[2])


def merge_crops(crops: list[Crop], call_cost: int = 0) -> list[Crop]:
    """Replace any two crops by their bounding crop while that costs no more than the two apart, a crop
    costing its pixels plus ``call_cost`` (overlapping or touching crops always merge), so no pixel is
    computed twice there and the network is called once.

    Args:
        crops: (y0, y1, x0, x1) pixel crops.
        call_cost: the fixed cost of one network call, in input pixels.

    Returns:
        The merged crops, sorted.
    """
    crops = list(crops)
    merged = True
    while merged:
        merged = False
        for i in range(len(crops)):
            for j in range(i + 1, len(crops)):
                a, b = crops[i], crops[j]
                union = (min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3]))
                if _area(union) <= _area(a) + _area(b) + call_cost:
                    crops[i] = union
                    del crops[j]
                    merged = True
                    break
            if merged:
                break
    return sorted(crops)


def decode_face_maps(
    cls: np.ndarray, deltas: np.ndarray, stride: int, score_thresh: float, nms_thresh: float
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes and scores from Phantom's maps: the cells above ``score_thresh`` that are the maximum of their
    3 x 3 neighbourhood, their boxes from Phantom's coder (``centre_size_to_xyxy`` from each cell's top-left
    corner, as ``decode_face_boxes``), then the shared ``detect`` (NMS at ``nms_thresh``, boxes clipped to the
    frame the maps cover).

    The video path decodes every frame, so the candidates are picked in numpy first and only they reach the
    tensor code: a frame without a face costs a threshold and a 3 x 3 maximum filter on the 32 x 32 map, not
    a full decode. The peak filter keeps the NMS small whatever the map holds: a face lights up a blob of
    adjacent cells whose boxes NMS would suppress anyway, and an untrained or confused map that passes the
    threshold everywhere (1,024 cells at 128 px) would otherwise cost an NMS over all of them.

    Args:
        cls: [1, H, W] logits. deltas: [4, H, W] (dx, dy, log w, log h).

    Returns:
        boxes [K, 4] xyxy pixels (float32) and scores [K], after NMS, best first.
    """
    from detforge.models.edge.phantom import MAX_LOG_SIZE

    logits = np.asarray(cls, dtype=np.float32)[0]  # [H, W]
    h, w = logits.shape
    logit_thresh = float(np.log(score_thresh / (1.0 - score_thresh)))
    local_max = ndimage.maximum_filter(logits, size=3, mode="constant", cval=-np.inf)  # [H, W]
    rows, cols = np.nonzero((logits > logit_thresh) & (logits == local_max))  # [K] each
    k = int(rows.size)
    if k == 0:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
    corners = torch.from_numpy(np.stack([cols, rows], axis=1).astype(np.float32) * stride)  # [K, 2] (x, y)
    cell_deltas = torch.from_numpy(
        np.ascontiguousarray(np.asarray(deltas, np.float32)[:, rows, cols].T)
    )  # [K, 4]
    strides = torch.full((k,), float(stride))  # [K]
    boxes = centre_size_to_xyxy(corners, strides, cell_deltas, max_log_size=MAX_LOG_SIZE)[None]  # [1, K, 4]
    scores = torch.from_numpy(logits[rows, cols]).sigmoid().reshape(1, k, 1)  # [1, K, 1]
    det = detect(scores, boxes, [k], [(h * stride, w * stride)], score_thresh, nms_thresh, k, k)[0]
    return det["boxes"].numpy(), det["scores"].numpy()


class PhantomVideo:
    """Stateful sparse runner for one video; see the module docstring.

    Args:
        network: numpy callable (see the module docstring).
        memory: the model's GRU ``TrackMemory`` (None: constant-velocity tracking).
        refresh_interval: full-frame recomputation every this many frames.
        event_threshold: per-pixel absolute difference (0..1) counted as an event.
        detection_threshold: accumulated track confidence needed to report a face.
        tile: event tile size in pixels (multiple of ``align``).
        halo: context pixels around an active region (multiple of ``align``). PhantomNet sees past any halo,
            so recomputed cells near a crop's edge differ somewhat from a full-frame pass until the next
            refresh; 16 stays closer to full-frame results, 8 (the default) does about half the work on
            busy scenes.
        max_sparse_fraction: above this fraction of the frame (crops plus ``call_cost`` per crop), run the
            whole frame instead.
        min_tile_events: event pixels a tile needs to count as active.
        call_cost: the fixed cost of one network call (runtime overhead) in input pixels; crops closer than
            that merge into one call.
        align: crops start at multiples of this many pixels: the network's total stride (4 for
            ``PhantomNet``, whose layers all work at stride 4 or finer; a network with coarser layers needs
            their stride here, or its cells inside a crop differ from the full frame's).
        tracker: a :class:`~detforge.tracking.Tracker` for ``step``; default the ``memory`` tracker with
            ``memory``, ``min_iou=0.1``, ``max_missed=10``, reporting each face's accumulated confidence once
            it reaches ``detection_threshold``.
    """

    stride = 4  # input pixels per cell of the output maps

    def __init__(
        self,
        network: Network,
        *,
        memory: TrackMemory | None,
        refresh_interval: int = 30,
        event_threshold: float = 0.08,
        detection_threshold: float = 0.5,
        nms_thresh: float = 0.3,
        tile: int = 8,
        halo: int = 8,
        max_sparse_fraction: float = 0.7,
        min_tile_events: int = 4,
        call_cost: int = 0,
        align: int = 4,
        tracker: Tracker | None = None,
    ) -> None:
        if align < 1 or align % self.stride:
            raise ValueError(
                f"align ({align}) must be a positive multiple of the output stride {self.stride}"
            )
        if tile < 1 or tile % align or halo % align:
            raise ValueError(f"tile ({tile}) and halo ({halo}) must be multiples of align ({align})")
        self.network = network
        self.memory = memory
        self.refresh_interval = refresh_interval
        self.event_threshold = event_threshold
        self.detection_threshold = detection_threshold
        self.candidate_threshold = detection_threshold / 2  # tracked faces may continue below the threshold
        self.nms_thresh = nms_thresh
        self.tile = tile
        self.halo = halo
        self.max_sparse_fraction = max_sparse_fraction
        self.min_tile_events = min_tile_events
        self.align = align
        self.call_cost = call_cost
        self._given_tracker = tracker
        self.reset()

    def reset(self) -> None:
        """Forget everything about the current video."""
        self.frame_index = 0
        self.previous: np.ndarray | None = None  # [C, H, W]
        self.cls: np.ndarray | None = None  # [1, H/4, W/4]
        self.deltas: np.ndarray | None = None  # [4, H/4, W/4]
        self.tracker: Tracker | None = self._given_tracker
        if self.tracker is not None:
            self.tracker.reset()
        self.profile = FrameProfile()
        self.last_candidates: tuple[np.ndarray, np.ndarray] | None = None

    # ---- network on the whole frame or on event regions ----------------------------------------------
    def _regions(self, events: np.ndarray, h: int, w: int) -> list[Crop]:
        """Crops covering each connected group of active tiles plus the halo, overlapping ones merged."""
        t, halo = self.tile, self.halo
        th, tw = -(-h // t), -(-w // t)
        padded = np.zeros((th * t, tw * t), dtype=bool)
        padded[:h, :w] = events
        counts = padded.reshape(th, t, tw, t).sum(axis=(1, 3))  # [th, tw] event pixels per tile
        active = counts >= self.min_tile_events  # isolated sensor-noise pixels do not wake a tile
        labelled, count = ndimage.label(active)
        crops = [
            (
                max(sl[0].start * t - halo, 0),
                min(sl[0].stop * t + halo, h),
                max(sl[1].start * t - halo, 0),
                min(sl[1].stop * t + halo, w),
            )
            for sl in ndimage.find_objects(labelled)[:count]
        ]
        return merge_crops(crops, self.call_cost)

    def _run_full(self, x: np.ndarray) -> None:
        cls, deltas = self.network(np.ascontiguousarray(x[None]))
        self.cls, self.deltas = cls[0].copy(), deltas[0].copy()

    def _run_sparse(self, x: np.ndarray, crops: list[Crop]) -> int:
        """Recompute the cached maps inside each crop's tiles; returns the input pixels processed."""
        s, halo = self.stride, self.halo
        h, w = x.shape[-2:]
        pixels = 0
        for y0, y1, x0, x1 in crops:
            cls, deltas = self.network(np.ascontiguousarray(x[None, :, y0:y1, x0:x1]))
            pixels += (y1 - y0) * (x1 - x0)
            # inner part (without the halo, except at the image border) goes back into the cache
            iy0, iy1 = (y0 + halo if y0 > 0 else 0), (y1 - halo if y1 < h else h)
            ix0, ix1 = (x0 + halo if x0 > 0 else 0), (x1 - halo if x1 < w else w)
            cy, cx = slice((iy0 - y0) // s, (iy1 - y0) // s), slice((ix0 - x0) // s, (ix1 - x0) // s)
            self.cls[:, iy0 // s : iy1 // s, ix0 // s : ix1 // s] = cls[0][:, cy, cx]
            self.deltas[:, iy0 // s : iy1 // s, ix0 // s : ix1 // s] = deltas[0][:, cy, cx]
        return pixels

    def infer(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Network + decode for one frame (no tracking): candidate boxes [K, 4] and scores [K].

        ``frame`` is a float32 array [C, H, W] in [0, 1] with H, W multiples of 4.
        """
        x = np.asarray(frame, dtype=np.float32)
        h, w = x.shape[-2:]
        if h % self.stride or w % self.stride:
            raise ValueError(f"Phantom video frames need H and W divisible by {self.stride}, got {h} x {w}")
        refresh = (
            self.previous is None
            or self.previous.shape != x.shape
            or self.frame_index % self.refresh_interval == 0
        )
        event_fraction, calls = 1.0, 1
        if refresh:
            self._run_full(x)
            mode, fraction = "full", 1.0
        else:
            events = np.abs(x - self.previous).mean(axis=0) > self.event_threshold  # [H, W]
            event_fraction = float(events.mean())
            crops = self._regions(events, h, w) if event_fraction > 0 else []
            if not crops:
                mode, fraction, calls = "skip", 0.0, 0
            else:
                area = sum(_area(c) + self.call_cost for c in crops) / (h * w)
                if area > self.max_sparse_fraction:
                    self._run_full(x)
                    mode, fraction = "full", 1.0
                else:
                    fraction = self._run_sparse(x, crops) / (h * w)
                    mode, calls = "sparse", len(crops)
        self.previous = x
        self.frame_index += 1
        self.profile.fractions.append(fraction)
        self.profile.event_fractions.append(event_fraction)
        self.profile.modes.append(mode)
        self.profile.calls.append(calls)
        if mode != "skip" or self.last_candidates is None:
            self.last_candidates = decode_face_maps(
                self.cls, self.deltas, self.stride, self.candidate_threshold, self.nms_thresh
            )
        return self.last_candidates

    def step(self, frame: np.ndarray) -> dict[str, torch.Tensor]:
        """``infer`` + tracking on one frame (float32 array [C, H, W] in [0, 1]).

        Returns:
            The tracker protocol's dict (:mod:`detforge.tracking.base`), CPU tensors: ``boxes`` [M, 4] xyxy
            pixels, ``scores`` [M] (with the default tracker: each face's confidence accumulated over its
            track), ``labels`` [M] (0, "face"), ``track_ids`` [M] int64, ``detection_indices`` [M].
        """
        boxes, scores = self.infer(frame)
        h, w = frame.shape[-2:]
        boxes = boxes.copy()
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
        if self.tracker is None:
            self.tracker = create_tracker(
                "memory",
                memory=self.memory,
                image_size=(int(h), int(w)),
                min_iou=0.1,
                max_missed=10,
                report_score="track",
                min_track_score=self.detection_threshold,
            )
        detections = {
            "boxes": torch.from_numpy(boxes),
            "scores": torch.from_numpy(scores),
            "labels": torch.zeros(len(scores), dtype=torch.int64),
        }
        return self.tracker.update(detections)
