"""``SyntheticVideo``: the synthetic shapes in motion, for tracking (``--data synthetic-video[:N]``).

Each sequence (default 60 frames of 256 x 256 px at 30 fps, up to 10 objects in all) is rendered by
:class:`~detforge.data.synthetic.SyntheticShapes`' sequence mode, with motion made for tracking:

- the first object enters the frame (it is outside at the first frame and shows within the first two thirds
  of the sequence), the second leaves it (it is fully out by the last frame, gone within the last third);
  the others ``wander`` (bouncing off the borders), ``pass`` along a straight line
  (in or out of the frame, or through it) or ``cross``: they pass through another object's position at some
  frame, drawn over it, so that object is partly or fully hidden for a while and reappears;
- objects are drawn in track order, so a later track hides an earlier one where they overlap.

Ground truth per frame (the dicts of :func:`~detforge.data.mot.read_mot_txt`, ``gt=True``): the box of each
object's *visible* pixels (a fully hidden or fully outside object has no row in that frame), its shape
class as ``labels``, its ``track_ids`` (1-based in each sequence), ``visibility`` (visible fraction of its
whole area, cut by the border or by others) and ``considered`` (all True: every object is scored, hidden parts
and all, as MOT17 does). Every frame is a function of ``(seed, sequence, frame)`` only.

As a detection data set (``dataset[i]``, frame ``i % sequence_length`` of sequence ``i // sequence_length``)
the targets are those of the sequence mode: ``ignore=True`` for boxes hidden more than ``max_occlusion``,
``track_ids`` per sequence, ``frame_index`` and ``sequence_id``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

from detforge.data.mot import MOTSequence
from detforge.data.synthetic import _NO_ROTATION, SHAPE_NAMES, SyntheticShapes, _bounce, _Shape

__all__ = ["SyntheticVideo"]

_KINDS = ("wander", "cross", "pass", "cross")  # motions of the tracks after the entering and leaving ones


@dataclass(frozen=True)
class _Track:
    """One object's path: ``centre(t) = anchor + velocity * (t - anchor_frame)``, reflected into the frame
    when ``bounce``; ``spin`` radians per frame."""

    shape: _Shape
    anchor: tuple[float, float]
    anchor_frame: float
    velocity: tuple[float, float]
    bounce: bool
    spin: float


class SyntheticVideo(SyntheticShapes):
    """Sequences of moving, crossing, occluding, entering and leaving shapes; ``dataset[i] -> (image, target)``
    over all frames, :meth:`sequence` / :meth:`sequences` for tracking.

    Args:
        num_sequences: number of sequences.
        sequence_length: frames per sequence.
        image_size: rendered size, int or ``(h, w)``.
        num_classes: shape classes, 1 to 8 (class ``i`` is ``SHAPE_NAMES[i]``).
        seed: base seed; frame ``t`` of sequence ``s`` depends on ``(seed, s, t)`` only.
        max_tracks: most objects in one sequence over its whole length (at least 2: one enters, one leaves).
        fps: frame rate written to ``seqinfo.ini``.
        motion: speed multiplier (about 1.5 to 4 px per frame at 256 px, scaled with the image).
        min_size, max_size, max_occlusion, noise, imgsz, transforms, cache: see
            :class:`~detforge.data.synthetic.SyntheticShapes` (``max_size`` defaults to a quarter of the side).
    """

    def __init__(
        self,
        num_sequences: int = 8,
        sequence_length: int = 60,
        image_size: int | tuple[int, int] = 256,
        num_classes: int = 5,
        seed: int = 0,
        *,
        max_tracks: int = 10,
        fps: float = 30.0,
        motion: float = 1.0,
        min_size: float = 12.0,
        max_size: float = 0.25,
        max_occlusion: float = 0.35,
        noise: float = 6.0,
        imgsz: int | tuple[int, int] | None = None,
        transforms: Callable | None = None,
        cache: bool = False,
    ) -> None:
        if num_sequences < 0:
            raise ValueError(f"num_sequences must be >= 0, got {num_sequences}")
        if max_tracks < 2:
            raise ValueError(f"max_tracks must be >= 2 (one object enters, one leaves), got {max_tracks}")
        if fps <= 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        super().__init__(
            num_images=num_sequences * sequence_length,
            image_size=image_size,
            num_classes=num_classes,
            seed=seed,
            mode="sequence",
            sequence_length=sequence_length,
            motion=motion,
            min_size=min_size,
            max_size=max_size,
            max_objects=max_tracks,
            empty_fraction=0.0,
            max_occlusion=max_occlusion,
            noise=noise,
            imgsz=imgsz,
            transforms=transforms,
            cache=cache,
        )
        self.num_sequences = int(num_sequences)
        self.fps = float(fps)
        self._track_cache: tuple[int, list[_Track]] = (-1, [])

    def __repr__(self) -> str:
        return (
            f"SyntheticVideo(num_sequences={self.num_sequences}, sequence_length={self.sequence_length}, "
            f"image_size={(self.height, self.width)}, num_classes={self.num_classes}, seed={self.seed})"
        )

    # ------------------------------------------------------------------ motion
    def _tracks(self, sequence: int, background: np.ndarray) -> list[_Track]:
        """The paths of ``sequence``'s objects, from ``(seed, sequence)`` only."""
        if self._track_cache[0] == sequence:
            return self._track_cache[1]
        rng = np.random.default_rng([self.seed, 1, sequence])
        length, w, h = self.sequence_length, self.width, self.height
        count = int(rng.integers(max(2, self.max_objects // 2), self.max_objects + 1))
        scale = self.motion * min(w, h) / 256.0
        tracks: list[_Track] = []
        for k in range(count):
            shape = self._pick_color(rng, background, self._sample_shape(rng))
            speed = scale * float(rng.uniform(1.5, 4.0))
            heading = float(rng.uniform(-np.pi, np.pi))
            kind = ("enter", "leave")[k] if k < 2 else _KINDS[(k - 2) % len(_KINDS)]
            anchor, anchor_frame, bounce = (shape.cx, shape.cy), 0.0, kind == "wander"
            if kind in ("enter", "leave"):
                # Just outside a random border at the anchor frame, moving in (enter) or out (leave).
                side = int(rng.integers(4))
                normal = ((1, 0), (-1, 0), (0, 1), (0, -1))[side]  # inward normal of left, right, top, bottom
                reach = max(shape.rx, shape.ry) * 1.42 + 1.0
                along = float(rng.uniform(0.2, 0.8))
                x = (-reach, w + reach, along * w, along * w)[side]
                y = (along * h, along * h, -reach, h + reach)[side]
                inward = np.arctan2(normal[1], normal[0]) + float(rng.uniform(-0.6, 0.6))
                heading = inward if kind == "enter" else inward + np.pi
                if self.motion > 0:  # fast enough to cross the border within a third of the sequence
                    speed = max(speed, 2 * reach / max(length / 3, 1))
                lo, hi = (
                    (1, max(1, length // 3)) if kind == "enter" else (max(0, 2 * length // 3), length - 1)
                )
                anchor, anchor_frame = (x, y), float(rng.integers(lo, max(lo, hi) + 1))
            elif kind == "cross" and tracks:
                other = tracks[int(rng.integers(len(tracks)))]
                anchor_frame = float(rng.integers(0, length))
                anchor = self._centre(other, anchor_frame)
            elif kind == "pass":
                anchor_frame = float(rng.integers(0, length))
            rotates = SHAPE_NAMES[shape.label] not in _NO_ROTATION
            spin = self.motion * float(rng.uniform(-0.05, 0.05)) if rotates else 0.0
            velocity = (speed * float(np.cos(heading)), speed * float(np.sin(heading)))
            tracks.append(_Track(shape, anchor, anchor_frame, velocity, bounce, spin))
        self._track_cache = (sequence, tracks)
        return tracks

    def _centre(self, track: _Track, frame: float) -> tuple[float, float]:
        x = track.anchor[0] + track.velocity[0] * (frame - track.anchor_frame)
        y = track.anchor[1] + track.velocity[1] * (frame - track.anchor_frame)
        if track.bounce:
            rx, ry = track.shape.rx, track.shape.ry
            return _bounce(x, rx * 0.5, self.width - rx * 0.5), _bounce(y, ry * 0.5, self.height - ry * 0.5)
        return float(x), float(y)

    def _sequence_shapes(self, sequence: int, frame: int, background: np.ndarray) -> list[_Shape]:
        """Every object of ``sequence`` at ``frame`` (those outside the frame are not drawn), in track order."""
        shapes = []
        for track in self._tracks(sequence, background):
            cx, cy = self._centre(track, frame)
            shapes.append(replace(track.shape, cx=cx, cy=cy, angle=track.shape.angle + track.spin * frame))
        return shapes

    def _render_sample(self, index: int) -> tuple[Tensor, dict, np.ndarray]:
        image, target, visibility = super()._render_sample(index)
        # The sequence mode numbers tracks across sequences; MOT numbers them per sequence, from 1.
        target["track_ids"] = target["track_ids"] - target["sequence_id"] * self.max_objects + 1
        return image, target, visibility

    # ------------------------------------------------------------------ sequences
    def frame_gt(self, sequence: int, frame: int) -> dict[str, Tensor]:
        """Ground truth of frame ``frame`` (0-based) of ``sequence``: ``boxes`` (float32 [N, 4] xyxy, pixels of
        ``image_size``), ``scores``, ``labels``, ``track_ids``, ``visibility`` and ``considered``."""
        _, target, visibility = self._render_sample(self._index(sequence, frame))
        n = len(target["labels"])
        return {
            "boxes": target["boxes"],
            "scores": torch.ones(n),
            "labels": target["labels"],
            "track_ids": target["track_ids"],
            "visibility": torch.from_numpy(visibility),
            "considered": torch.ones(n, dtype=torch.bool),
        }

    def _index(self, sequence: int, frame: int) -> int:
        if not 0 <= sequence < self.num_sequences:
            raise IndexError(f"sequence {sequence} out of range for {self.num_sequences} sequences")
        if not 0 <= frame < self.sequence_length:
            raise IndexError(f"frame {frame} out of range for {self.sequence_length} frames")
        return sequence * self.sequence_length + frame

    def sequence(self, index: int) -> MOTSequence:
        """Sequence ``index`` as a :class:`~detforge.data.mot.MOTSequence`: rendered frames (uint8
        ``[3, H, W]`` at ``image_size``, ``imgsz`` does not apply) and gt keyed by 1-based frame number (frames
        without objects absent)."""
        gt = {}
        for frame in range(self.sequence_length):
            entry = self.frame_gt(index, frame)
            if len(entry["track_ids"]):
                gt[frame + 1] = entry
        return MOTSequence(
            name=f"synthetic-{self.seed}-{index:03d}",
            num_frames=self.sequence_length,
            fps=self.fps,
            size=(self.height, self.width),
            gt=gt,
            class_names=tuple(self.class_names),
            protocol="all",
            render=lambda i, s=index: self.render(self._index(s, i))[0],
        )

    def sequences(self) -> Iterator[MOTSequence]:
        """Every sequence in order (each rendered when reached)."""
        return (self.sequence(i) for i in range(self.num_sequences))
