"""Exponential moving average of the weights, evaluated and saved in place of the raw weights.

Built on Lightning's ``WeightAveraging`` callback: validation runs on the averaged weights, checkpoints hold
them under ``state_dict`` (the raw weights under ``current_model_state``) and resume restores both. The decay
ramps up as ``decay * (1 - exp(-updates / warmup_updates))`` (as in YOLOX / timm), so short runs are not
dominated by the random initial weights.
"""

from __future__ import annotations

import math

import torch
from lightning.pytorch.callbacks import WeightAveraging
from torch import Tensor

__all__ = ["ExponentialMovingAverage", "ema_decay_at"]


def ema_decay_at(updates: int, decay: float, warmup_updates: float) -> float:
    """Decay used for update number ``updates`` (1-based): ramps from 0 towards ``decay``."""
    if warmup_updates <= 0:
        return decay
    return decay * (1.0 - math.exp(-updates / warmup_updates))


class _RampedEMA:
    """``multi_avg_fn`` for ``torch.optim.swa_utils.AveragedModel``: in-place EMA with a ramped decay.
    A class rather than a closure so the callback can be deep-copied and pickled."""

    def __init__(self, decay: float, warmup_updates: float) -> None:
        self.decay = decay
        self.warmup_updates = warmup_updates

    @torch.no_grad()
    def __call__(self, averaged: list[Tensor], current: list[Tensor], num_averaged: Tensor | int) -> None:
        d = ema_decay_at(int(num_averaged), self.decay, self.warmup_updates)
        if torch.is_floating_point(averaged[0]) or torch.is_complex(averaged[0]):
            torch._foreach_lerp_(averaged, current, 1.0 - d)
        else:  # integer buffers such as BatchNorm's num_batches_tracked: follow the model
            for a, c in zip(averaged, current, strict=True):
                a.copy_(c)


class ExponentialMovingAverage(WeightAveraging):
    """Keep an EMA of all parameters and buffers; validate and checkpoint with it.

    Args:
        decay: the decay reached after the ramp, in [0, 1).
        warmup_updates: optimizer steps over which the decay ramps up (e-folding length); 0 disables the ramp.
        device: where the averaged copy lives (default: with the model).
    """

    def __init__(
        self, decay: float = 0.9998, warmup_updates: float = 2000.0, device: str | None = None
    ) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        if warmup_updates < 0:
            raise ValueError(f"EMA warmup_updates must be >= 0, got {warmup_updates}")
        super().__init__(device=device, use_buffers=True, multi_avg_fn=_RampedEMA(decay, warmup_updates))
        self.decay = decay
        self.warmup_updates = warmup_updates
