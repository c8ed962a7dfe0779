"""Multi-scale training: a random input size per batch (or every N batches), the same on every DDP rank.

:class:`MultiScale` resizes a collated training batch (``images`` Tensor[B, C, H, W], ``targets``) on its
device, as YOLOX and mmdet do; :class:`~detforge.data.DetectionDataModule` calls it from its
``on_after_batch_transfer`` hook (``multi_scale=(lo, hi)``), the one place batches change size:

- ``"fixed"`` (dense one-stage models): the whole batch goes to one size; the longer side is a multiple of
  the model's largest stride drawn uniformly among those in ``[lo, hi]`` times the batch's longer side, the
  other side keeps the batch's aspect ratio, rounded to a multiple of the stride as well (bilinear
  ``F.interpolate``, boxes and ``size`` scaled with it).
- ``"keep_ratio"`` (models with :attr:`~detforge.models.base.Detector.keeps_aspect_ratio`, two-stage and
  DETR-style): each image's content (its ``size``) gets its own shortest edge, a multiple of the stride drawn
  among those in ``[lo, hi]`` times the batch's shorter side, its longer edge capped at ``hi`` times the
  batch's longer side (mmdet's ``Resize(keep_ratio=True)`` with a list of scales); the batch is padded with
  the letterbox grey to the largest, rounded up to the stride.

Rank 0 draws the random numbers (from a generator seeded with ``(seed, draw)``) and broadcasts them with
``torch.distributed``, so every rank resizes to the same size; the last ``off_epochs`` epochs train at the
loader's size.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from detforge.data.transforms import pad_value

__all__ = ["MultiScale", "MultiScaleMode", "model_stride"]

MultiScaleMode = Literal["fixed", "keep_ratio"]
_MODES = ("fixed", "keep_ratio")
_DEFAULT_STRIDE = 32


def model_stride(model: nn.Module) -> int:
    """The largest stride of ``model``'s feature maps (its ``strides``), the size every input side should be
    a multiple of; 32 for a model that names none."""
    strides = getattr(model, "strides", None)
    return int(max(strides)) if strides else _DEFAULT_STRIDE


def broadcast_from_rank0(values: Tensor) -> Tensor:
    """``values`` as rank 0 has them, on every rank (unchanged without torch.distributed)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        values = values.clone()
        dist.broadcast(values, src=0)
    return values


class MultiScale:
    """Resize training batches to random sizes (see the module docstring).

    Args:
        scale_range: ``(lo, hi)`` factors of the loader's batch size, ``0 < lo <= hi``.
        every: draw a new size every this many batches (YOLOX: 10); the size holds in between.
        off_epochs: train the last this many epochs at the loader's size (YOLOX's no-augmentation epochs).
        seed: seeds rank 0's draws.
        num_draws: random numbers drawn (and broadcast) per new size, the same count on every rank whatever
            its batch holds; ``"keep_ratio"`` gives image ``i`` draw ``i % num_draws`` (use the batch size).
    """

    def __init__(
        self,
        scale_range: tuple[float, float],
        every: int = 1,
        off_epochs: int = 0,
        seed: int = 0,
        num_draws: int = 1,
    ) -> None:
        lo, hi = (float(v) for v in scale_range)
        if not 0 < lo <= hi:
            raise ValueError(f"multi_scale must be (lo, hi) with 0 < lo <= hi, got {scale_range}")
        if every < 1:
            raise ValueError(f"multi_scale_every must be >= 1, got {every}")
        if off_epochs < 0:
            raise ValueError(f"multi_scale_off_epochs must be >= 0, got {off_epochs}")
        self.scale_range = (lo, hi)
        self.every = int(every)
        self.off_epochs = int(off_epochs)
        self.seed = int(seed)
        self.num_draws = max(int(num_draws), 1)
        self._calls = 0
        self._draws: Tensor | None = None  # [n] uniforms in [0, 1) of the current size

    def active(self, epoch: int, max_epochs: int | None) -> bool:
        """Whether batches of ``epoch`` (0-based) are resized: not in the last ``off_epochs`` epochs."""
        if self.off_epochs == 0 or max_epochs is None or max_epochs < 0:
            return True
        return epoch < max_epochs - self.off_epochs

    def draws(self, device: torch.device | str = "cpu") -> Tensor:
        """``num_draws`` uniforms in [0, 1) (float64 [num_draws], on the CPU) for the next batch: new every
        ``every`` calls (the only calls that communicate), rank 0's on every rank."""
        if self._draws is None or self._calls % self.every == 0:
            draw = self._calls // self.every
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + draw)
            values = torch.rand(self.num_draws, dtype=torch.float64, generator=generator)
            self._draws = broadcast_from_rank0(values.to(device)).cpu()
        self._calls += 1
        return self._draws

    def _multiple(self, u: float, side: int, stride: int) -> int:
        """A multiple of ``stride`` drawn (by ``u`` in [0, 1)) among those in ``scale_range`` x ``side``."""
        lo = max(math.ceil(self.scale_range[0] * side / stride), 1)
        hi = max(math.floor(self.scale_range[1] * side / stride), 1)
        if hi < lo:  # no multiple inside the range: the nearest one to the loader's side
            return max(round(side / stride), 1) * stride
        return (lo + min(int(u * (hi - lo + 1)), hi - lo)) * stride

    def __call__(
        self, images: Tensor, targets: list[dict], stride: int, mode: MultiScaleMode = "fixed"
    ) -> tuple[Tensor, list[dict]]:
        """The batch resized (new tensors; the targets are shallow copies with scaled ``boxes`` / ``size`` /
        ``area``). ``images``: Tensor[B, C, H, W]; ``stride``: the model's largest stride."""
        if mode not in _MODES:
            raise ValueError(f"multi-scale mode must be one of {_MODES}, got {mode!r}")
        if mode == "fixed":
            return self._fixed(images, targets, stride)
        return self._keep_ratio(images, targets, stride)

    def _fixed(self, images: Tensor, targets: list[dict], stride: int) -> tuple[Tensor, list[dict]]:
        height, width = images.shape[-2:]
        u = float(self.draws(images.device)[0])
        if height >= width:
            new_h = self._multiple(u, height, stride)
            new_w = max(round(width * new_h / height / stride), 1) * stride
        else:
            new_w = self._multiple(u, width, stride)
            new_h = max(round(height * new_w / width / stride), 1) * stride
        if (new_h, new_w) == (height, width):
            return images, targets
        resized = _resize(images, new_h, new_w)  # [B, C, new_h, new_w]
        sy, sx = new_h / height, new_w / width
        return resized, [_scale_target(t, sx, sy, (new_h, new_w)) for t in targets]

    def _keep_ratio(self, images: Tensor, targets: list[dict], stride: int) -> tuple[Tensor, list[dict]]:
        batch, channels, height, width = images.shape
        draws = self.draws(images.device)
        short_cap, long_cap = min(height, width), self.scale_range[1] * max(height, width)
        contents, out_targets = [], []
        for i, target in enumerate(targets):
            h, w = (int(v) for v in target.get("size", torch.tensor([height, width])).tolist())
            shortest = self._multiple(float(draws[i % len(draws)]), short_cap, stride)
            scale = min(shortest / min(h, w), long_cap / max(h, w))
            new_h, new_w = max(round(h * scale), 1), max(round(w * scale), 1)
            contents.append(_resize(images[i : i + 1, :, :h, :w], new_h, new_w)[0])  # [C, new_h, new_w]
            out_targets.append(_scale_target(target, new_w / w, new_h / h, (new_h, new_w)))
        out_h = math.ceil(max(c.shape[-2] for c in contents) / stride) * stride
        out_w = math.ceil(max(c.shape[-1] for c in contents) / stride) * stride
        out = images.new_full(
            (batch, channels, out_h, out_w), pad_value(images.dtype)
        )  # [B, C, out_h, out_w]
        for i, content in enumerate(contents):
            out[i, :, : content.shape[-2], : content.shape[-1]] = content
        return out, out_targets


def _resize(images: Tensor, height: int, width: int) -> Tensor:
    """Bilinear resize of Tensor[B, C, H, W] (antialiased when shrinking)."""
    shrink = height < images.shape[-2] or width < images.shape[-1]
    return F.interpolate(images, size=(height, width), mode="bilinear", align_corners=False, antialias=shrink)


def _scale_target(target: dict, sx: float, sy: float, bound: tuple[int, int]) -> dict:
    """A shallow copy of ``target`` with ``boxes`` / ``area`` scaled by ``(sx, sy)`` and ``size`` too
    (capped at ``bound`` = (h, w))."""
    out = dict(target)
    boxes = target["boxes"]
    out["boxes"] = boxes * boxes.new_tensor([sx, sy, sx, sy])
    if isinstance(target.get("area"), Tensor):
        out["area"] = target["area"] * (sx * sy)
    size = target.get("size")
    if isinstance(size, Tensor):
        h, w = size.tolist()
        out["size"] = torch.tensor(
            [min(round(h * sy), bound[0]), min(round(w * sx), bound[1])], dtype=size.dtype, device=size.device
        )
    return out
