"""``SyntheticShapes``: the built-in procedural data set that makes ``detforge train`` work out of the box.

Every image shows a few filled shapes (circle, rectangle, triangle, ellipse, star, cross, diamond, ring) of
many sizes, colours and aspect ratios on a textured, noisy background; class ``i`` is shape type ``i``. About
10% of the images are empty. Sample ``i`` depends only on ``(seed, i)``, so DataLoader workers, random access
and repeated epochs all see the same pixels and boxes.

Boxes are the tight xyxy boxes of the *visible* pixels of each shape (after occlusion by later shapes and
clipping by the image border). In ``rgb`` and ``thermal`` modes a shape is placed only where it hides at most
``max_occlusion`` of any earlier shape (else it is re-drawn, and after a few failed tries left out of the image,
never just out of the targets), so every box is a training target. In ``sequence`` mode objects move freely and
may cross: a track hidden by more than ``max_occlusion`` keeps its box with ``ignore=True``; a fully hidden one
has no box in that frame.

Modes:
- ``rgb``: 3-channel colour shapes.
- ``thermal``: 1-channel images, warm (bright, centre-hot) shapes on a cool noisy background.
- ``sequence``: ``num_images`` frames cut into sequences of ``sequence_length`` frames in which the shapes move
  smoothly (bouncing off the borders); targets carry ``track_ids``, ``frame_index`` and ``sequence_id``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from detforge.data.deprecation import renamed_kwargs, warn_renamed
from detforge.data.transforms import as_detection_transform

__all__ = ["SHAPE_NAMES", "SyntheticShapes"]

SHAPE_NAMES = ("circle", "rectangle", "triangle", "ellipse", "star", "cross", "diamond", "ring")
_MODES = ("rgb", "thermal", "sequence")
_PLACEMENT_TRIES = 8
# Shapes whose outline does not change under rotation, or that we keep axis-aligned so their form stays unique
# (a rotated rectangle would look like a diamond).
_NO_ROTATION = {"circle", "ring", "rectangle", "diamond"}
_STAR = np.stack(
    [
        np.where(np.arange(10) % 2 == 0, 1.0, 0.45) * np.sin(np.arange(10) * np.pi / 5),
        -np.where(np.arange(10) % 2 == 0, 1.0, 0.45) * np.cos(np.arange(10) * np.pi / 5),
    ],
    axis=1,
)  # [10, 2] unit star, point up
_TRIANGLE = np.array([[0.0, -1.0], [1.0, 0.8], [-1.0, 0.8]])  # [3, 2] unit triangle, point up


@dataclass(frozen=True)
class _Shape:
    """One object to draw: shape class, centre (pixels), half-extents (pixels), rotation, colour, warmth."""

    label: int
    cx: float
    cy: float
    rx: float
    ry: float
    angle: float
    color: tuple[float, ...]
    shade: float  # strength of the per-object linear shading gradient (rgb) or centre heat (thermal)


def _point_in_polygon(x: np.ndarray, y: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Even-odd rule for points ``x, y`` (arrays [h, w]) against ``poly`` (array [V, 2]); bool [h, w]."""
    inside = np.zeros(x.shape, dtype=bool)
    x1, y1 = poly[:, 0], poly[:, 1]
    x2, y2 = np.roll(x1, -1), np.roll(y1, -1)
    for ax, ay, bx, by in zip(x1, y1, x2, y2):
        if ay == by:
            continue
        crosses = (ay > y) != (by > y)
        x_at = ax + (y - ay) * (bx - ax) / (by - ay)
        inside ^= crosses & (x < x_at)
    return inside


def _unit_mask(name: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Membership of unit-frame coordinates ``u, v`` (arrays [h, w], shape spans [-1, 1]²) in shape ``name``."""
    if name in ("circle", "ellipse"):
        return u * u + v * v <= 1.0
    if name == "ring":
        r2 = u * u + v * v
        return (r2 <= 1.0) & (r2 >= 0.3)
    if name == "rectangle":
        return (np.abs(u) <= 1.0) & (np.abs(v) <= 1.0)
    if name == "diamond":
        return np.abs(u) + np.abs(v) <= 1.0
    if name == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= 1.0) & (av <= 0.3)) | ((au <= 0.3) & (av <= 1.0))
    if name == "triangle":
        return _point_in_polygon(u, v, _TRIANGLE)
    if name == "star":
        return _point_in_polygon(u, v, _STAR)
    raise ValueError(f"unknown shape {name!r}")


def _shape_mask(shape: _Shape, height: int, width: int) -> tuple[tuple[int, int, int, int], np.ndarray, int]:
    """Rasterise ``shape`` at pixel centres.

    Returns the window ``(y0, y1, x0, x1)`` inside the image, the bool mask over that window ([y1-y0, x1-x0])
    and the shape's full pixel area including any part beyond the image border.
    """
    reach = max(shape.rx, shape.ry) * (1.0 if shape.angle == 0.0 else 1.42)
    reach_x = shape.rx if shape.angle == 0.0 else reach
    reach_y = shape.ry if shape.angle == 0.0 else reach
    fx0, fx1 = int(np.floor(shape.cx - reach_x)), int(np.ceil(shape.cx + reach_x)) + 1
    fy0, fy1 = int(np.floor(shape.cy - reach_y)), int(np.ceil(shape.cy + reach_y)) + 1
    xs = np.arange(fx0, fx1, dtype=np.float32) + 0.5 - shape.cx  # [w_full]
    ys = np.arange(fy0, fy1, dtype=np.float32) + 0.5 - shape.cy  # [h_full]
    dx, dy = xs[None, :], ys[:, None]  # [1, w_full], [h_full, 1]
    if shape.angle != 0.0:
        cos, sin = np.cos(shape.angle), np.sin(shape.angle)
        u = (dx * cos + dy * sin) / shape.rx  # [h_full, w_full]
        v = (dy * cos - dx * sin) / shape.ry
    else:
        u, v = (
            np.broadcast_to(dx / shape.rx, (len(ys), len(xs))),
            np.broadcast_to(dy / shape.ry, (len(ys), len(xs))),
        )
    full = _unit_mask(SHAPE_NAMES[shape.label], u, v)  # [h_full, w_full]
    y0, y1, x0, x1 = max(fy0, 0), min(fy1, height), max(fx0, 0), min(fx1, width)
    if y0 >= y1 or x0 >= x1:
        return (0, 0, 0, 0), np.zeros((0, 0), dtype=bool), int(full.sum())
    window = full[y0 - fy0 : y1 - fy0, x0 - fx0 : x1 - fx0]
    return (y0, y1, x0, x1), window, int(full.sum())


@functools.lru_cache(maxsize=16)
def _interpolation(grid: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Linear interpolation from ``grid`` evenly spread nodes to ``size`` pixel centres: left node index
    (int64 [size]), right node index and the right node's weight (float32 [size])."""
    position = (np.arange(size, dtype=np.float64) + 0.5) / size * (grid - 1)  # [size] in node units
    left = np.minimum(np.floor(position).astype(np.int64), grid - 2)
    return left, left + 1, (position - left).astype(np.float32)


def _upsample(nodes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear upsampling of ``nodes`` (float32 [g, g, C]) to pixel centres; float32 [height, width, C]."""
    top, bottom, wy = _interpolation(nodes.shape[0], height)
    left, right, wx = _interpolation(nodes.shape[1], width)
    wy, wx = wy[:, None, None], wx[None, :, None]
    rows = nodes[top] * (1 - wy) + nodes[bottom] * wy  # [height, g, C]
    return rows[:, left] * (1 - wx) + rows[:, right] * wx  # [height, width, C]


def _textured_field(
    rng: np.random.Generator, channels: int, height: int, width: int, base: tuple[float, float], detail: float
) -> np.ndarray:
    """Smooth random background, uint8 [H, W, C]: a coarse 4x4 colour field in ``base`` plus finer 12x12
    blotches of +-``detail``, interpolated to pixels in one pass."""
    coarse = rng.uniform(*base, size=(4, 4, channels)).astype(np.float32)  # [4, 4, C]
    fine = _upsample(coarse, 12, 12) + rng.uniform(-detail, detail, size=(12, 12, channels)).astype(
        np.float32
    )
    return np.clip(_upsample(fine, height, width), 0, 255).astype(np.uint8)


class SyntheticShapes(Dataset):
    """Procedural shapes data set; ``dataset[i] -> (image Tensor[C, H, W], target dict)``.

    Args:
        num_images: number of samples (frames in ``sequence`` mode).
        image_size: rendered size, int or ``(h, w)`` (the canvas the shapes are drawn on, like a file's size;
            :class:`~detforge.data.DetectionDataModule` renders at its ``imgsz``).
        num_classes: how many shape types to use (class ``i`` is ``SHAPE_NAMES[i]``), 1 to 8.
        seed: base seed; sample ``i`` depends on ``(seed, i)`` only.
        mode: ``"rgb"`` (3 channels), ``"thermal"`` (1 channel) or ``"sequence"`` (3 channels, moving objects).
        sequence_length: frames per sequence in ``sequence`` mode.
        motion: speed multiplier in ``sequence`` mode; 0 gives static sequences.
        min_size: smallest shape, pixels along its longer side.
        max_size: largest shape as a fraction of the shorter image side.
        max_objects: most shapes in one image (at least one in a non-empty image).
        empty_fraction: probability that an image (a whole sequence in ``sequence`` mode) has no shapes.
        max_occlusion: largest hidden fraction of a shape (see the module docstring for what happens beyond).
        noise: standard deviation of the per-pixel Gaussian noise, in uint8 grey levels.
        imgsz: optional ``(h, w)`` (or int for square) to resize the rendered image and boxes to, as the file
            readers' ``imgsz``; ``target_size=`` is its deprecated name.
        transforms: optional ``transforms(image_uint8 Tensor[C, H, W], target) -> (image, target)``; without
            it the image is returned as float32 in [0, 1].
        cache: keep each rendered uint8 image and its target in memory (per process, so per DataLoader
            worker), so later epochs only pay for ``transforms``; about ``H * W * C`` bytes per image.

    The target has ``boxes`` (float32 [N, 4] xyxy pixels), ``labels`` (int64 [N]), ``image_id``, ``orig_size``,
    ``size``, ``iscrowd`` and ``ignore`` (bool [N]), ``area`` (float32 [N], visible pixels) and, in
    ``sequence`` mode, ``track_ids`` (int64 [N]), ``frame_index`` and ``sequence_id``.
    """

    @renamed_kwargs(target_size="imgsz")
    def __init__(
        self,
        num_images: int = 512,
        image_size: int | tuple[int, int] = 256,
        num_classes: int = 5,
        seed: int = 0,
        mode: Literal["rgb", "thermal", "sequence"] = "rgb",
        *,
        sequence_length: int = 30,
        motion: float = 1.0,
        min_size: float = 12.0,
        max_size: float = 0.6,
        max_objects: int = 6,
        empty_fraction: float = 0.1,
        max_occlusion: float = 0.35,
        noise: float = 6.0,
        imgsz: int | tuple[int, int] | None = None,
        transforms: Callable | None = None,
        cache: bool = False,
    ) -> None:
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
        if not 1 <= num_classes <= len(SHAPE_NAMES):
            raise ValueError(
                f"num_classes must be in 1..{len(SHAPE_NAMES)} (shape types {SHAPE_NAMES}), got {num_classes}"
            )
        if num_images < 0:
            raise ValueError(f"num_images must be >= 0, got {num_images}")
        height, width = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if min(height, width) < 16:
            raise ValueError(f"image_size must be at least 16 pixels, got {image_size}")
        if not 0 < max_size <= 1:
            raise ValueError(f"max_size is a fraction of the shorter image side in (0, 1], got {max_size}")
        if not 2 <= min_size <= max_size * min(height, width):
            raise ValueError(
                f"min_size must be in [2, max_size * shorter side = {max_size * min(height, width):.0f}], got {min_size}"
            )
        if max_objects < 1:
            raise ValueError(f"max_objects must be >= 1, got {max_objects}")
        if not 0 <= empty_fraction <= 1:
            raise ValueError(f"empty_fraction must be in [0, 1], got {empty_fraction}")
        if not 0 <= max_occlusion < 1:
            raise ValueError(f"max_occlusion must be in [0, 1), got {max_occlusion}")
        if sequence_length < 1:
            raise ValueError(f"sequence_length must be >= 1, got {sequence_length}")
        self.num_images = int(num_images)
        self.height, self.width = int(height), int(width)
        self.num_classes = int(num_classes)
        self.class_names = list(SHAPE_NAMES[: self.num_classes])
        self.seed = int(seed)
        self.mode = mode
        self.in_chans = 1 if mode == "thermal" else 3
        self.sequence_length = int(sequence_length)
        self.motion = float(motion)
        self.min_size = float(min_size)
        self.max_size = float(max_size)
        self.max_objects = int(max_objects)
        self.empty_fraction = float(empty_fraction)
        self.max_occlusion = float(max_occlusion)
        self.noise = float(noise)
        amplitude = self.noise * np.sqrt(3.0)  # uniform on [-a, a] has standard deviation a / sqrt(3)
        self._noise_table = np.round(np.linspace(-amplitude, amplitude, 256)).astype(np.int16)
        if imgsz is not None:
            imgsz = (int(imgsz), int(imgsz)) if isinstance(imgsz, int) else (int(imgsz[0]), int(imgsz[1]))
        self.imgsz: tuple[int, int] | None = imgsz
        self._sequence_background: tuple[int, np.ndarray | None] = (-1, None)
        self.transforms = as_detection_transform(transforms)  # a raw v2 pipeline moves the boxes too
        self.cache = bool(cache)
        self._renders: dict[int, tuple[Tensor, dict]] = {}

    def __len__(self) -> int:
        return self.num_images

    def __repr__(self) -> str:
        return (
            f"SyntheticShapes(num_images={self.num_images}, image_size={(self.height, self.width)}, "
            f"num_classes={self.num_classes}, seed={self.seed}, mode={self.mode!r})"
        )

    # ------------------------------------------------------------------ sampling
    def _sample_shape(self, rng: np.random.Generator) -> _Shape:
        label = int(rng.integers(self.num_classes))
        name = SHAPE_NAMES[label]
        lo, hi = self.min_size, self.max_size * min(self.height, self.width)
        size = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))  # longer side, pixels
        if name in ("circle", "ring"):
            aspect = 1.0
        elif name == "ellipse":
            aspect = float(rng.uniform(0.35, 0.55))  # clearly not a circle
        elif name == "star":
            aspect = float(rng.uniform(0.85, 1.0))
        else:
            aspect = float(rng.uniform(0.45, 1.0))
        rx, ry = size / 2, size / 2 * aspect
        if rng.random() < 0.5:
            rx, ry = ry, rx
        angle = 0.0 if name in _NO_ROTATION else float(rng.uniform(-np.pi, np.pi))
        cx, cy = self._sample_centre(rng, rx, ry)
        if self.mode == "thermal":
            color = (float(rng.uniform(150, 235)),)
            shade = float(rng.uniform(0.15, 0.45))
        else:
            color = tuple(float(c) for c in rng.uniform(0, 255, size=3))
            shade = float(rng.uniform(-30, 30))
        return _Shape(label, cx, cy, rx, ry, angle, color, shade)

    def _sample_centre(self, rng: np.random.Generator, rx: float, ry: float) -> tuple[float, float]:
        """Centre such that at most about a quarter of the shape leaves the image."""
        mx, my = min(rx * 0.5, self.width / 2), min(ry * 0.5, self.height / 2)
        return float(rng.uniform(mx, self.width - mx)), float(rng.uniform(my, self.height - my))

    def _background(self, rng: np.random.Generator) -> np.ndarray:
        """Textured background, uint8 [H, W, C]: cool and grey for thermal, colourful otherwise."""
        if self.mode == "thermal":
            return _textured_field(rng, 1, self.height, self.width, (35, 95), 12)
        return _textured_field(rng, 3, self.height, self.width, (30, 225), 18)

    def _pick_color(self, rng: np.random.Generator, background: np.ndarray, shape: _Shape) -> _Shape:
        """Re-draw an rgb shape's colour until it stands out from the background at its centre."""
        if self.mode == "thermal":
            return shape
        y = min(max(int(shape.cy), 0), self.height - 1)
        x = min(max(int(shape.cx), 0), self.width - 1)
        under = background[y, x].astype(np.float64)
        color = np.asarray(shape.color)
        for _ in range(10):
            if np.abs(color - under).sum() >= 150:
                break
            color = rng.uniform(0, 255, size=3)
        else:
            color = np.where(under > 127, 0.0, 255.0)
        return replace(shape, color=tuple(float(c) for c in color))

    # ------------------------------------------------------------------ rendering
    def _paint(
        self, canvas: np.ndarray, shape: _Shape, window: tuple[int, int, int, int], mask: np.ndarray
    ) -> None:
        y0, y1, x0, x1 = window
        region = canvas[y0:y1, x0:x1]  # [h, w, C] view
        if self.mode == "thermal":
            yy = (np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5 - shape.cy) / max(shape.ry, shape.rx)
            xx = (np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5 - shape.cx) / max(shape.ry, shape.rx)
            heat = shape.color[0] * (1.0 - shape.shade * np.minimum(xx * xx + yy * yy, 1.0))  # [h, w]
            region[mask, 0] = np.clip(heat[mask], 0, 255)
            return
        ramp = (np.arange(x0, x1, dtype=np.float32)[None, :] - shape.cx) / max(shape.rx, 1.0)  # [1, w]
        color = np.asarray(shape.color, dtype=np.float32)  # [C]
        shaded = color + (shape.shade * ramp)[..., None].repeat(mask.shape[0], 0)[mask]  # [M, C]
        region[mask] = np.clip(shaded, 0, 255)

    def _render(
        self,
        rng: np.random.Generator,
        background: np.ndarray,
        shapes: list[_Shape],
        place: bool,
    ) -> tuple[np.ndarray, list[int], np.ndarray, np.ndarray, np.ndarray]:
        """Draw ``shapes`` in order over ``background`` (uint8 [H, W, C]), then add noise.

        With ``place=True`` a shape that would hide more than ``max_occlusion`` of an earlier one (or show less
        than ``1 - max_occlusion`` of itself inside the image) is moved, and left out after a few tries.

        Returns the uint8 image [H, W, C], the indices of the drawn shapes, their visible boxes (float32 [K, 4]),
        visible pixel counts (float32 [K]) and visible fractions (float32 [K]).
        """
        h, w = self.height, self.width
        canvas = background.copy()
        owner = np.full((h, w), -1, dtype=np.int16)  # which drawn shape each pixel shows
        drawn: list[int] = []
        windows: list[tuple[int, int, int, int]] = []
        full_area: list[int] = []
        visible = np.zeros(0, dtype=np.int64)  # [K] visible pixels of each drawn shape so far
        keep = 1.0 - self.max_occlusion
        for index, shape in enumerate(shapes):
            for _ in range(_PLACEMENT_TRIES if place else 1):
                window, mask, area = _shape_mask(shape, h, w)
                y0, y1, x0, x1 = window
                covered = owner[y0:y1, x0:x1][mask]  # owners of the pixels this shape would cover
                hidden = np.bincount(covered[covered >= 0], minlength=len(drawn))  # [K]
                own = int(mask.sum())
                ok = own > 0 and own >= keep * max(area, 1)
                if ok and drawn:
                    ok = bool(np.all(visible - hidden >= keep * np.asarray(full_area)))
                if ok or not place:
                    break
                cx, cy = self._sample_centre(rng, shape.rx, shape.ry)
                shape = replace(shape, cx=cx, cy=cy)
            else:
                continue  # no room for this shape in this image
            if own == 0:
                continue
            if place:
                shape = self._pick_color(rng, background, shape)
            owner[y0:y1, x0:x1][mask] = len(drawn)
            self._paint(canvas, shape, window, mask)
            drawn.append(index)
            windows.append(window)
            full_area.append(max(area, own))
            visible = np.append(visible - hidden, own)
        if self.noise > 0:
            # Uniform noise with standard deviation ``noise``: random bytes looked up in a table of offsets
            # (much cheaper than Gaussians), added in int16 so it can saturate.
            noise = self._noise_table[np.frombuffer(rng.bytes(canvas.size), dtype=np.uint8)]
            noisy = canvas.astype(np.int16) + noise.reshape(canvas.shape)
            canvas = np.clip(noisy, 0, 255, out=noisy).astype(np.uint8)
        image = canvas  # [H, W, C] uint8
        boxes = np.zeros((len(drawn), 4), dtype=np.float32)
        counts = np.zeros(len(drawn), dtype=np.float32)
        for slot, (y0, y1, x0, x1) in enumerate(windows):
            mine = owner[y0:y1, x0:x1] == slot  # [h, w] this shape's visible pixels, inside its window
            rows, cols = np.flatnonzero(mine.any(axis=1)), np.flatnonzero(mine.any(axis=0))
            if len(rows):
                boxes[slot] = (x0 + cols[0], y0 + rows[0], x0 + cols[-1] + 1, y0 + rows[-1] + 1)
                counts[slot] = np.count_nonzero(mine)
        return image, drawn, boxes, counts, counts / np.maximum(np.asarray(full_area, np.float32), 1.0)

    def _sequence_shapes(self, sequence: int, frame: int, background: np.ndarray) -> list[_Shape]:
        """The shapes of ``frame`` in ``sequence``: start state from ``(seed, sequence)``, moved ``frame`` steps."""
        rng = np.random.default_rng([self.seed, 1, sequence])
        count = 0 if rng.random() < self.empty_fraction else int(rng.integers(1, self.max_objects + 1))
        shapes = []
        for _ in range(count):
            shape = self._pick_color(rng, background, self._sample_shape(rng))  # against where it starts
            speed = self.motion * float(rng.uniform(0.5, 3.0))  # pixels per frame
            heading = float(rng.uniform(-np.pi, np.pi))
            rotates = SHAPE_NAMES[shape.label] not in _NO_ROTATION
            spin = self.motion * float(rng.uniform(-0.05, 0.05)) if rotates else 0.0  # radians per frame
            # Straight line, bouncing off the borders: a triangle wave in each axis.
            x = shape.cx + speed * np.cos(heading) * frame
            y = shape.cy + speed * np.sin(heading) * frame
            cx = _bounce(x, shape.rx * 0.5, self.width - shape.rx * 0.5)
            cy = _bounce(y, shape.ry * 0.5, self.height - shape.ry * 0.5)
            shapes.append(replace(shape, cx=cx, cy=cy, angle=shape.angle + spin * frame))
        return shapes

    def render(self, index: int) -> tuple[Tensor, dict]:
        """Sample ``index`` as a uint8 image Tensor[C, H, W] at ``image_size`` and its target (no resizing)."""
        image, target, _ = self._render_sample(index)
        return image, target

    def _render_sample(self, index: int) -> tuple[Tensor, dict, np.ndarray]:
        """:meth:`render`, plus the visible fraction of each target box (float32 [N])."""
        if not 0 <= index < self.num_images:
            raise IndexError(f"SyntheticShapes index {index} out of range for {self.num_images} images")
        if self.mode == "sequence":
            sequence, frame = divmod(index, self.sequence_length)
            if self._sequence_background[0] != sequence:  # consecutive frames share their background
                background = self._background(np.random.default_rng([self.seed, 3, sequence]))
                self._sequence_background = (sequence, background)
            background = self._sequence_background[1]
            shapes = self._sequence_shapes(sequence, frame, background)
            rng = np.random.default_rng([self.seed, 2, sequence, frame])
            image, drawn, boxes, counts, fractions = self._render(rng, background, shapes, False)
        else:
            rng = np.random.default_rng([self.seed, 0, index])
            background = self._background(rng)
            count = 0 if rng.random() < self.empty_fraction else int(rng.integers(1, self.max_objects + 1))
            shapes = [self._sample_shape(rng) for _ in range(count)]
            image, drawn, boxes, counts, fractions = self._render(rng, background, shapes, True)
        present = counts > 0  # a fully hidden object has nothing to detect
        labels = np.asarray([shapes[i].label for i in drawn], dtype=np.int64).reshape(-1)[present]
        h, w = self.height, self.width
        target = {
            "boxes": torch.from_numpy(boxes[present]).reshape(-1, 4),
            "labels": torch.from_numpy(labels),
            "image_id": int(index),
            "orig_size": torch.tensor([h, w], dtype=torch.int64),
            "size": torch.tensor([h, w], dtype=torch.int64),
            "iscrowd": torch.zeros(len(labels), dtype=torch.bool),
            "ignore": torch.from_numpy(fractions[present] < 1.0 - self.max_occlusion - 1e-6),
            "area": torch.from_numpy(counts[present]),
        }
        if self.mode == "sequence":
            ids = np.asarray(drawn, dtype=np.int64).reshape(-1) + sequence * self.max_objects
            target["track_ids"] = torch.from_numpy(ids[present])
            target["frame_index"] = frame
            target["sequence_id"] = sequence
        image = torch.from_numpy(image).permute(2, 0, 1).contiguous()  # [C, H, W] uint8
        return image, target, fractions[present].astype(np.float32)

    def _cached_render(self, index: int) -> tuple[Tensor, dict]:
        """``render(index)``, from the in-memory cache when ``cache`` is on (copies, so callers may edit)."""
        if not self.cache:
            return self.render(index)
        if index not in self._renders:
            self._renders[index] = self.render(index)
        image, target = self._renders[index]
        return image.clone(), _copy_target(target)

    @property
    def target_size(self) -> tuple[int, int] | None:
        """Deprecated name of :attr:`imgsz`."""
        warn_renamed(type(self).__name__, "target_size", "imgsz", stacklevel=2)
        return self.imgsz

    def __getitem__(self, index: int) -> tuple[Tensor, dict]:
        if index < 0:
            index += self.num_images
        image, target = self._cached_render(index)
        if self.imgsz is not None and tuple(self.imgsz) != (self.height, self.width):
            th, tw = self.imgsz
            sx, sy = tw / self.width, th / self.height
            image = TF.resize(image, [th, tw], antialias=True)  # [C, th, tw] uint8
            target["boxes"] = target["boxes"] * torch.tensor([sx, sy, sx, sy])
            target["area"] = target["area"] * (sx * sy)
            target["size"] = torch.tensor([th, tw], dtype=torch.int64)
        if self.transforms is not None:
            return self.transforms(image, target)
        return image.float().div_(255.0), target


def _copy_target(target: dict) -> dict:
    """A target whose tensors can be changed in place without touching ``target``'s."""
    return {k: v.clone() if isinstance(v, Tensor) else v for k, v in target.items()}


def _bounce(position: float, lo: float, hi: float) -> float:
    """Reflect ``position`` into ``[lo, hi]`` as a ball bouncing between two walls."""
    if hi <= lo:
        return (lo + hi) / 2
    span = hi - lo
    phase = (position - lo) % (2 * span)
    return float(lo + (phase if phase <= span else 2 * span - phase))
