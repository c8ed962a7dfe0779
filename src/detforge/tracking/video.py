"""Video in and out: frames from a video file, a folder of frames (MOT layout too), a camera or a stream; an
annotated video written so that what was written stays playable.

Decoding and encoding use OpenCV (``cv2.VideoCapture`` / ``cv2.VideoWriter``, FFmpeg inside the wheel), which
the tracking library already brings: one library for every source, cameras and RTSP / HTTP streams included.
Frames are RGB ``np.ndarray[H, W, 3]`` uint8, the layout :func:`detforge.io.load_image_uint8` gives after a
permute.

A broken source never ends in a traceback: a file OpenCV cannot open is one :class:`~detforge.errors.DataError`
naming it; a video whose decoding stops before its last frame ends the iteration with
:attr:`VideoSource.stopped_early` saying where (the last good frame), and the frames before it are kept; an
unreadable file in a folder of frames is skipped and counted (:attr:`VideoSource.skipped`).
"""

from __future__ import annotations

import configparser
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from detforge.errors import DataError, MissingFileError

__all__ = [
    "VIDEO_SUFFIXES",
    "AnnotatedVideoWriter",
    "VideoSource",
    "draw_tracks",
    "is_video_source",
    "open_video_source",
]

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".ts")
FRAME_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
SourceKind = Literal["video", "frames", "camera", "stream"]


def _cv2():
    """OpenCV with FFmpeg's own log lines ("moov atom not found") silenced: detforge names the file itself."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    os.environ.setdefault("OPENCV_LOG_LEVEL", "SILENT")
    import cv2

    return cv2


def is_video_source(source: str) -> bool:
    """True for a video file (by suffix), a camera index (``0``) or a stream URL (``rtsp://...``)."""
    return source.isdigit() or "://" in source or Path(source).suffix.lower() in VIDEO_SUFFIXES


def _frame_folder(path: Path) -> tuple[Path, float | None, str]:
    """The folder holding the frames of ``path`` (a MOT sequence's ``img1/``, per its ``seqinfo.ini`` when
    present), its frame rate if the layout says it, and the sequence name."""
    info = path / "seqinfo.ini"
    if info.is_file():
        parser = configparser.ConfigParser()
        parser.read(info)
        seq = parser["Sequence"] if parser.has_section("Sequence") else {}
        folder = path / seq.get("imDir", "img1")
        rate = seq.get("frameRate")
        return folder, float(rate) if rate else None, seq.get("name", path.name)
    if (path / "img1").is_dir():
        return path / "img1", None, path.name
    return path, None, path.name


@dataclass
class VideoSource:
    """One sequence of frames. Iterate it for ``np.ndarray[H, W, 3]`` uint8 RGB frames.

    Attributes:
        source: what the user named (path, camera index or URL).
        kind: ``video`` (a file), ``frames`` (a folder of images), ``camera`` or ``stream``.
        name: a file-name-safe stem for outputs (``<out>/<name>.mp4``, ``<name>.txt``).
        fps: frames per second (the container's, the layout's, or ``default_fps``).
        num_frames: frames announced by the container or the folder; None for cameras and streams.
        frame_paths: the image files of a ``frames`` source, in order.
        skipped: frames of a ``frames`` source that could not be read, as (frame number, path, reason).
        stopped_early: set when decoding ended before the announced end: the file and the last good frame.
    """

    source: str
    kind: SourceKind
    name: str
    fps: float
    num_frames: int | None = None
    frame_paths: list[Path] = field(default_factory=list)
    skipped: list[tuple[int, Path, str]] = field(default_factory=list)
    stopped_early: str | None = None
    frames_read: int = 0
    render: Callable[[int], Any] | None = field(default=None, repr=False)

    @classmethod
    def from_sequence(cls, sequence) -> VideoSource:
        """A :class:`~detforge.data.mot.MOTSequence` (files or rendered frames, e.g. ``synthetic-video``) as a
        ``frames`` source."""
        paths = [Path(p) for p in sequence.frame_paths]
        source = sequence.folder or sequence.name
        render = None if paths else sequence.frame
        return cls(str(source), "frames", sequence.name, sequence.fps, len(sequence), paths, render=render)

    @property
    def live(self) -> bool:
        """A camera or a stream: frames arrive in real time, so they run one at a time."""
        return self.kind in ("camera", "stream")

    def __iter__(self) -> Iterator[np.ndarray]:
        self.skipped, self.stopped_early, self.frames_read = [], None, 0
        if self.kind == "frames":
            yield from self._iter_frames()
        else:
            yield from self._iter_capture()

    def _iter_frames(self) -> Iterator[np.ndarray]:
        from detforge.io import load_image_uint8

        if self.render is not None:  # rendered frames: uint8 Tensor[3, H, W] each
            for index in range(self.num_frames or 0):
                self.frames_read += 1
                yield self.render(index).permute(1, 2, 0).numpy()  # [H, W, 3]
            return
        for number, path in enumerate(self.frame_paths, start=1):
            try:
                frame = load_image_uint8(path, "RGB").permute(1, 2, 0).numpy()  # [H, W, 3]
            except (OSError, ValueError) as err:  # empty, truncated, not an image
                self.skipped.append((number, path, str(err).splitlines()[0]))
                continue
            self.frames_read += 1
            yield frame

    def _iter_capture(self) -> Iterator[np.ndarray]:
        cv2 = _cv2()
        target = int(self.source) if self.kind == "camera" else self.source
        capture = cv2.VideoCapture(target)
        if not capture.isOpened():
            raise DataError(
                f"{self.source}: cannot open the {self.kind} (not a video, truncated or unreachable)"
            )
        try:
            while True:
                ok, frame = capture.read()  # [H, W, 3] BGR
                if not ok or frame is None:
                    break
                self.frames_read += 1
                yield np.ascontiguousarray(frame[:, :, ::-1])  # [H, W, 3] RGB
        finally:
            capture.release()
        # containers announce their length; ending well short of it means a truncated or corrupt file
        if self.num_frames and self.frames_read < self.num_frames - 1:
            last = f"frame {self.frames_read}" if self.frames_read else "no frame"
            self.stopped_early = (
                f"{self.source}: decoding stopped after {last} of {self.num_frames} (truncated or corrupt); "
                "the frames before it were processed and written"
            )


def open_video_source(source: str, *, default_fps: float = 30.0) -> VideoSource:
    """Open ``source``: a video file, a folder of frames (MOT layout: ``seqinfo.ini`` / ``img1/``), a camera
    index (``"0"``) or a stream URL (``rtsp://``, ``http://``). A missing path raises
    :class:`~detforge.errors.MissingFileError`; a file OpenCV cannot open, :class:`~detforge.errors.DataError`."""
    if source.isdigit():
        return VideoSource(source, "camera", f"camera{source}", default_fps)
    if "://" in source:
        name = "".join(c if c.isalnum() or c in "-_." else "_" for c in source.split("://", 1)[1])
        name = name[-64:].strip("_.")  # the end of a long URL tells streams apart
        return VideoSource(source, "stream", name or "stream", default_fps)
    path = Path(source)
    if path.is_dir():
        folder, rate, name = _frame_folder(path)
        paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in FRAME_SUFFIXES and p.is_file())
        if not paths:
            raise MissingFileError(f"{source}: no frames ({', '.join(FRAME_SUFFIXES)}) in {folder}")
        return VideoSource(source, "frames", name, rate or default_fps, len(paths), paths)
    if not path.is_file():
        raise MissingFileError(f"{source}: no such video file, folder of frames, camera index or URL")
    cv2 = _cv2()
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            size = path.stat().st_size
            why = "an empty file" if size == 0 else "not a video, or truncated before its index"
            raise DataError(f"{source}: cannot open the video ({why})")
        fps = capture.get(cv2.CAP_PROP_FPS)
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    finally:
        capture.release()
    fps = fps if fps and np.isfinite(fps) and 0 < fps < 1000 else default_fps
    return VideoSource(str(path), "video", path.stem, float(fps), count if count > 0 else None)


class AnnotatedVideoWriter:
    """Writes frames (``np.ndarray[H, W, 3]`` uint8 RGB) to ``path`` (``.mp4``: MPEG-4 Part 2, ``.avi``:
    MJPG). The file is written under a temporary name and renamed on :meth:`close`, which also runs when the
    ``with`` block ends in an error: a stopped run leaves a playable video of the frames written so far."""

    def __init__(self, path: str | os.PathLike, fps: float, size: tuple[int, int]) -> None:
        cv2 = _cv2()
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._partial = self.path.with_name(f".{self.path.stem}.partial{self.path.suffix}")
        fourcc = cv2.VideoWriter_fourcc(*("MJPG" if self.path.suffix.lower() == ".avi" else "mp4v"))
        h, w = size
        self._writer = cv2.VideoWriter(str(self._partial), fourcc, float(fps), (int(w), int(h)))
        if not self._writer.isOpened():
            raise DataError(f"{self.path}: OpenCV cannot write this video format (use .mp4 or .avi)")
        self.size = (int(h), int(w))
        self.frames = 0

    def write(self, frame: np.ndarray) -> None:
        """Append ``frame`` (RGB [H, W, 3] uint8, the size given at construction)."""
        if frame.shape[:2] != self.size:
            raise DataError(
                f"{self.path}: frame {self.frames + 1} is {frame.shape[:2]}, the video {self.size}"
            )
        self._writer.write(np.ascontiguousarray(frame[:, :, ::-1]))  # [H, W, 3] BGR
        self.frames += 1

    def close(self) -> None:
        if self._writer is None:
            return
        self._writer.release()
        self._writer = None
        if self.frames:
            os.replace(self._partial, self.path)
        else:
            self._partial.unlink(missing_ok=True)

    def __enter__(self) -> AnnotatedVideoWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_PALETTE = np.array(
    [[230, 25, 75], [60, 180, 75], [255, 225, 25], [67, 99, 216], [245, 130, 49], [145, 30, 180],
     [70, 240, 240], [240, 50, 230], [188, 246, 12], [250, 190, 190], [0, 128, 128], [154, 99, 36]],
    dtype=np.uint8,
)  # fmt: skip


def draw_tracks(
    frame: np.ndarray,
    detections: dict,
    class_names: list[str] | None = None,
) -> np.ndarray:
    """Draw ``detections`` (``boxes`` Tensor[N, 4] xyxy pixels of ``frame``, ``scores``, ``labels`` and, when
    tracked, ``track_ids``) on a copy of ``frame`` (RGB [H, W, 3] uint8). A tracked box is coloured by its id
    and labelled ``#id name score``; an untracked one by its class."""
    cv2 = _cv2()
    out = np.ascontiguousarray(frame).copy()
    boxes = detections["boxes"].detach().cpu().float().numpy().round().astype(np.int64)  # [N, 4]
    labels = detections["labels"].detach().cpu().tolist()
    scores = detections["scores"].detach().cpu().tolist()
    ids = detections.get("track_ids")
    ids = ids.detach().cpu().tolist() if ids is not None else [None] * len(labels)
    thickness = max(1, round(max(out.shape[:2]) / 400))
    for (x1, y1, x2, y2), label, score, tid in zip(boxes, labels, scores, ids, strict=True):
        color = tuple(int(c) for c in _PALETTE[(tid if tid is not None else label) % len(_PALETTE)])
        cv2.rectangle(out, (int(x1), int(y1)), (int(x2), int(y2)), color, thickness)
        name = class_names[label] if class_names and 0 <= label < len(class_names) else str(label)
        text = (f"#{tid} " if tid is not None else "") + f"{name} {score:.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thickness, 1)
        top = max(int(y1) - th - base, 0)
        cv2.rectangle(out, (int(x1), top), (int(x1) + tw, top + th + base), color, -1)
        cv2.putText(out, text, (int(x1), top + th), cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thickness, (0, 0, 0), 1)
    return out
