"""Run a detector (and a tracker) over the frames of one video source: the loop behind ``detforge predict`` on
videos and ``detforge track``.

Frames are decoded, batched (``batch`` at a time for files and folders, one at a time for cameras and streams,
whose frames arrive live), detected by a :class:`~detforge.engines.pipeline.DetectionPipeline`, tracked, drawn
and written as they go: an annotated video (``<out>/<name>.mp4``), the MOT-challenge results file
(``<out>/<name>.txt``, with a tracker) and per-frame records for ``predictions.json``. A progress line on stderr
gives frames/s.

Decoding runs in a thread ahead of the network, and drawing and encoding the annotated video in another behind
it (OpenCV releases the GIL while it decodes and encodes): the loop waits for them only when they fall behind.
Where the time goes is counted (:class:`SequenceReport`) as the loop sees it: the network, tracking, and the
waits for decoding and for the writer.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from detforge.engines.pipeline import detection_records
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
    """What one source gave: frames, detections, tracks, output files, and the loop's seconds per stage:
    ``network`` (pre-processing, network, post-processing), ``track``, and its waits for the decoding thread
    (``decode``) and the drawing + encoding thread (``write``, with the MOT file)."""

    name: str
    frames: int = 0
    detections: int = 0
    track_ids: set[int] = field(default_factory=set)
    outputs: list[Path] = field(default_factory=list)
    seconds: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(("decode", "network", "track", "write"), 0.0)
    )
    wall: float = 0.0
    warnings: list[str] = field(default_factory=list)
    tracked: dict[int, dict[str, Tensor]] = field(default_factory=dict)  # frame number -> tracked detections

    @property
    def fps(self) -> float:
        return self.frames / self.wall if self.wall > 0 else 0.0


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
        conf: the score threshold (see :func:`detect_and_track`).
        tracker: a :class:`detforge.tracking.Tracker` (reset first), or None to only detect.
        out: folder for ``<name>.mp4`` (when ``draw``) and ``<name>.txt`` (MOT results, with a tracker).
        batch: frames per forward pass for files and folders; cameras and streams run one at a time.
        records: per-frame records for ``predictions.json`` are appended here when given.
    """
    report = SequenceReport(source.name)
    seconds = report.seconds
    step = 1 if source.live else max(1, int(batch))
    writer: _DrawingWriter | None = None
    bar = _Progress(source.name, source.num_frames, progress)
    if tracker is not None:
        tracker.reset()
    start = time.perf_counter()
    if draw and out is not None:
        writer = _DrawingWriter(out / f"{source.name}{video_suffix}", source.fps, class_names)
    decoded = _Prefetch(_numbered(source), size=2 * step)
    try:
        frames = detect_and_track(
            decoded, pipeline, conf=conf, tracker=tracker, step=step, channels=channels, seconds=seconds
        )
        for number, frame, pred in frames:
            t0 = time.perf_counter()
            if tracker is not None:
                report.tracked[number] = pred
                report.track_ids.update(pred["track_ids"].tolist())
            report.detections += len(pred["scores"])
            if records is not None:
                records.append(_record(source, number, frame, pred, class_names))
            if writer is not None:
                writer.put(frame, pred)  # drawn and encoded in the writer's thread
            seconds["write"] += time.perf_counter() - t0
            report.frames += 1
            bar.update(report.frames)
    finally:
        decoded.close()
        if writer is not None:  # also on an error or Ctrl-C: the frames written so far stay playable
            t0 = time.perf_counter()
            path = writer.close()
            seconds["write"] += time.perf_counter() - t0
            if path is not None:
                report.outputs.append(path)
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


def detect_and_track(
    frames: Iterable[tuple[int, np.ndarray]],
    pipeline: Callable[[list[Tensor]], list[dict[str, Tensor]]],
    *,
    conf: float,
    tracker=None,
    step: int = 1,
    channels: int = 3,
    seconds: dict[str, float] | None = None,
) -> Iterator[tuple[int, np.ndarray, dict[str, Tensor]]]:
    """The one detect-and-track loop of ``detforge track``, ``predict`` on videos, ``val --track`` and
    :func:`detforge.tracking.track`: ``(number, frame)`` pairs (RGB [H, W, 3] uint8) run ``step`` at a time
    through ``pipeline``; each frame's detections scoring at least ``conf`` are yielded, or with a tracker
    those down to its low threshold (``minimum_score``: ByteTrack's second stage) go to ``tracker.update`` and
    its output is yielded. ``seconds`` (when given) gains the waits for ``frames`` (``decode``), the
    ``network`` and the ``track`` time."""
    floor = conf if tracker is None else min(getattr(tracker, "minimum_score", conf), conf)
    timer = seconds if seconds is not None else dict.fromkeys(("decode", "network", "track"), 0.0)
    pending: list[tuple[int, np.ndarray]] = []
    items = iter(frames)
    while True:
        t0 = time.perf_counter()
        item = next(items, None)
        timer["decode"] += time.perf_counter() - t0
        if item is not None:
            pending.append(item)
            if len(pending) < step:
                continue
        if not pending:  # the frames ended on a full batch
            return
        t0 = time.perf_counter()
        preds = pipeline([frame_tensor(frame, channels) for _, frame in pending])
        timer["network"] += time.perf_counter() - t0
        for (number, frame), pred in zip(pending, preds, strict=True):
            t0 = time.perf_counter()
            keep = pred["scores"] >= floor
            pred = {k: v[keep].cpu() for k, v in pred.items()}  # [K, ...]
            if tracker is not None:
                pred = tracker.update(pred, image=frame)
            timer["track"] += time.perf_counter() - t0
            yield number, frame, pred
        pending = []
        if item is None:
            return


def _numbered(source: VideoSource) -> Iterator[tuple[int, np.ndarray]]:
    """``(frame number, frame)``: the 1-based position in the sequence, skipped unreadable frames counted."""
    for frame in source:
        yield source.frames_read + len(source.skipped), frame


class _Prefetch:
    """Iterates ``items`` in a daemon thread, up to ``size`` ahead; an exception there is raised here, in order."""

    _END = object()

    def __init__(self, items: Iterator, size: int) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, size))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(items,), daemon=True, name="detforge-decode")
        self._thread.start()

    def _run(self, items: Iterator) -> None:
        try:
            for item in items:
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
            self._queue.put(self._END)
        except BaseException as err:  # noqa: BLE001 - handed to the consumer
            self._queue.put(err)

    def __iter__(self):
        while True:
            item = self._queue.get()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        """Stop reading ahead (the consumer left early) and wait for the thread."""
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get_nowait()
            except queue.Empty:
                self._thread.join(timeout=0.05)


class _DrawingWriter:
    """Draws each frame's boxes and encodes it into ``path`` in a thread; :meth:`put` blocks only when the
    thread is 8 frames behind. :meth:`close` finishes the video (playable) and re-raises a failure there."""

    def __init__(self, path: Path, fps: float, class_names: list[str] | None) -> None:
        self.path, self.fps, self.class_names = path, fps, class_names
        self._queue: queue.Queue = queue.Queue(maxsize=8)
        self._error: BaseException | None = None
        self._video: AnnotatedVideoWriter | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="detforge-write")
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is not None:
                continue  # drain: the failure is raised by close()
            try:
                frame, pred = item
                if self._video is None:
                    self._video = AnnotatedVideoWriter(self.path, self.fps, frame.shape[:2])
                self._video.write(draw_tracks(frame, pred, self.class_names))
            except BaseException as err:  # noqa: BLE001 - re-raised by close()
                self._error = err

    def put(self, frame: np.ndarray, pred: dict[str, Tensor]) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put((frame, pred))

    def close(self) -> Path | None:
        """Finish the video; returns its path (None when no frame was written)."""
        self._queue.put(None)
        self._thread.join()
        if self._video is not None:
            self._video.close()
        if self._error is not None:
            raise self._error
        return self.path if self._video is not None and self._video.frames else None


def _record(
    source: VideoSource, number: int, frame: np.ndarray, pred: dict[str, Tensor], names: list[str] | None
) -> dict:
    """One frame's ``predictions.json`` record: the source, the frame number (1-based), its size and the
    detections (``box`` xyxy pixels, ``score``, ``label``, ``class_name``, and ``track_id`` when tracked)."""
    record = {
        "file": source.source,
        "frame": number,
        "height": int(frame.shape[0]),
        "width": int(frame.shape[1]),
    }
    if source.frame_paths:
        record["image"] = str(source.frame_paths[number - 1])
    record["detections"] = detection_records(pred, names)
    return record
