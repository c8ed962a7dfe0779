"""Run a detector (and a tracker) over the frames of one video source: the loop behind ``detforge predict`` on
videos and ``detforge track``.

Frames are decoded, batched (``batch`` at a time for files and folders, one at a time for cameras and streams,
whose frames arrive live), detected by a :class:`~detforge.engines.pipeline.DetectionPipeline`, tracked, drawn
and written as they go: an annotated video (``<out>/<name>.mp4``), the MOT-challenge results file
(``<out>/<name>.txt``, with a tracker) and per-frame records for ``predictions.json``. A progress line on stderr
gives frames/s. Where the time goes is counted (:class:`SequenceReport`): the network, tracking, decoding,
drawing and writing.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from detforge.tracking.video import AnnotatedVideoWriter, VideoSource, draw_tracks

__all__ = ["SequenceReport", "frame_tensor", "run_sequence"]


def frame_tensor(frame: np.ndarray, channels: int = 3) -> Tensor:
    """An RGB frame (np.ndarray[H, W, 3] uint8) as the model's input image Tensor[C, H, W] uint8 (C = 1: luma,
    the ITU-R 601 weights PIL's ``L`` mode uses)."""
    image = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)  # [3, H, W]
    if channels == 1:
        weights = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
        image = (
            (image.float() * weights).sum(0, keepdim=True).round().clamp(0, 255).to(torch.uint8)
        )  # [1, H, W]
    return image


@dataclass
class SequenceReport:
    """What one source gave: frames, detections, tracks, output files, and seconds per stage."""

    name: str
    frames: int = 0
    detections: int = 0
    track_ids: set[int] = field(default_factory=set)
    outputs: list[Path] = field(default_factory=list)
    seconds: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(("decode", "network", "track", "draw", "write"), 0.0)
    )
    wall: float = 0.0
    warnings: list[str] = field(default_factory=list)
    tracked: dict[int, dict[str, Tensor]] = field(default_factory=dict)  # frame number -> tracked detections

    @property
    def fps(self) -> float:
        return self.frames / self.wall if self.wall > 0 else 0.0

    def outside_network(self) -> float:
        """Share of the wall time not spent in the network (decode, tracking, drawing, writing, the loop)."""
        return 1.0 - self.seconds["network"] / self.wall if self.wall > 0 else 0.0


class _Progress:
    """One stderr line with frames done and frames/s: rewritten in place on a terminal, every 10 s else."""

    def __init__(self, name: str, total: int | None, enabled: bool) -> None:
        self.name, self.total, self.enabled = name, total, enabled
        self.tty = sys.stderr.isatty()
        self.start = self.last = time.perf_counter()

    def update(self, done: int, final: bool = False) -> None:
        now = time.perf_counter()
        if not self.enabled or (not final and now - self.last < (0.5 if self.tty else 10.0)):
            return
        self.last = now
        of = f"/{self.total}" if self.total else ""
        rate = done / max(now - self.start, 1e-9)
        line = f"{self.name}: frame {done}{of}, {rate:.1f} frames/s"
        if self.tty:
            print(f"\r{line}", end="\n" if final else "", file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr, flush=True)


def run_sequence(
    source: VideoSource,
    pipeline: Callable[[list[Tensor]], list[dict[str, Tensor]]],
    *,
    conf: float,
    tracker=None,
    tracker_min_score: float | None = None,
    out: Path | None = None,
    batch: int = 8,
    channels: int = 3,
    class_names: list[str] | None = None,
    draw: bool = True,
    records: list[dict] | None = None,
    progress: bool = True,
    video_suffix: str = ".mp4",
) -> SequenceReport:
    """Detect (and track) every frame of ``source``.

    Args:
        source: the frames (:func:`detforge.tracking.video.open_video_source`).
        pipeline: decoded images (Tensor[C, H, W] uint8 each) -> detections in their pixels.
        conf: the score threshold of what is drawn and recorded without a tracker.
        tracker: a :class:`detforge.tracking.Tracker` (``reset()`` first), or None to only detect.
        tracker_min_score: detections at or above this score go to the tracker (ByteTrack's second stage
            wants the low-score ones); default ``conf``.
        out: folder for ``<name>.mp4`` (when ``draw``) and ``<name>.txt`` (MOT results, with a tracker).
        batch: frames per forward pass for files and folders; cameras and streams run one at a time.
        records: per-frame records for ``predictions.json`` are appended here when given.
    """
    report = SequenceReport(source.name)
    seconds = report.seconds
    step = 1 if source.live else max(1, int(batch))
    writer: AnnotatedVideoWriter | None = None
    bar = _Progress(source.name, source.num_frames, progress)
    if tracker is not None:
        tracker.reset()
    min_score = conf if tracker_min_score is None else min(tracker_min_score, conf)
    start = time.perf_counter()

    def flush(frames: list[np.ndarray], numbers: list[int]) -> None:
        nonlocal writer
        t0 = time.perf_counter()
        preds = pipeline([frame_tensor(f, channels) for f in frames])
        seconds["network"] += time.perf_counter() - t0
        for frame, number, pred in zip(frames, numbers, preds, strict=True):
            t0 = time.perf_counter()
            keep = pred["scores"] >= (min_score if tracker is not None else conf)
            pred = {k: v[keep].cpu() for k, v in pred.items()}  # [K, ...]
            if tracker is not None:
                pred = tracker.update(pred, image=frame)
                report.tracked[number] = pred
                report.track_ids.update(pred["track_ids"].tolist())
            t1 = time.perf_counter()
            seconds["track"] += t1 - t0
            report.detections += len(pred["scores"])
            if records is not None:
                records.append(_record(source, number, frame, pred, class_names))
            if draw and out is not None:
                drawn = draw_tracks(frame, pred, class_names)
                t2 = time.perf_counter()
                seconds["draw"] += t2 - t1
                if writer is None:
                    path = out / f"{source.name}{video_suffix}"
                    writer = AnnotatedVideoWriter(path, source.fps, frame.shape[:2])
                writer.write(drawn)
                seconds["write"] += time.perf_counter() - t2
            report.frames += 1
        bar.update(report.frames)

    frames: list[np.ndarray] = []
    numbers: list[int] = []
    skipped_before = 0
    try:
        t0 = time.perf_counter()
        for frame in source:
            seconds["decode"] += time.perf_counter() - t0
            skipped_before = len(source.skipped)
            frames.append(frame)
            numbers.append(source.frames_read + skipped_before)  # 1-based position in the sequence
            if len(frames) == step:
                flush(frames, numbers)
                frames, numbers = [], []
            t0 = time.perf_counter()
        if frames:
            flush(frames, numbers)
    finally:
        if writer is not None:  # also on an error or Ctrl-C: the frames written so far stay playable
            writer.close()
            report.outputs.append(writer.path)
    if tracker is not None and out is not None:
        from detforge.data.mot import write_mot_txt

        t0 = time.perf_counter()
        path = out / f"{source.name}.txt"
        write_mot_txt(path, report.tracked)
        seconds["write"] += time.perf_counter() - t0
        report.outputs.append(path)
    report.wall = time.perf_counter() - start
    bar.update(report.frames, final=True)
    for number, path, why in source.skipped:
        report.warnings.append(f"{path}: frame {number} skipped ({why})")
    if source.stopped_early:
        report.warnings.append(source.stopped_early)
    return report


def _record(
    source: VideoSource, number: int, frame: np.ndarray, pred: dict[str, Tensor], names: list[str] | None
) -> dict:
    """One frame's ``predictions.json`` record: the source, the frame number (1-based), its size and the
    detections (``box`` xyxy pixels, ``score``, ``label``, ``class_name``, and ``track_id`` when tracked)."""
    ids = pred.get("track_ids")
    dets = []
    for i, (box, score, label) in enumerate(zip(pred["boxes"], pred["scores"], pred["labels"], strict=True)):
        det = {
            "box": [round(float(c), 2) for c in box],
            "score": round(float(score), 4),
            "label": int(label),
            "class_name": names[int(label)] if names else str(int(label)),
        }
        if ids is not None:
            det["track_id"] = int(ids[i])
        dets.append(det)
    record = {
        "file": source.source,
        "frame": number,
        "height": int(frame.shape[0]),
        "width": int(frame.shape[1]),
    }
    if source.frame_paths:
        record["image"] = str(source.frame_paths[number - 1])
    record["detections"] = dets
    return record
