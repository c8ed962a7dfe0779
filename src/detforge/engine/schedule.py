"""The default learning-rate schedule (linear warmup, then cosine) and fitting it to a time budget.

:class:`WarmupCosine` is the multiplier ``LambdaLR`` calls per optimizer step. Its ``total_steps`` can
shrink while training runs: :class:`FitScheduleToTime` does that when the trainer has a ``max_time``, so a run
stopped by its time budget ends with the learning rate annealed instead of cut off mid-schedule
(ultralytics' ``--time`` does the same by re-planning its epochs).
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Timer

__all__ = ["FitScheduleToTime", "WarmupCosine", "WarmupCosineLR"]


class WarmupCosine:
    """Learning-rate multiplier: linear from ``warmup_ratio`` to 1 over ``warmup_steps``, then a half cosine
    from 1 to ``min_ratio`` ending at ``total_steps`` and flat after it.

    Args:
        total_steps: optimizer steps of the whole schedule, warmup included (> ``warmup_steps``).
        warmup_steps: steps of linear warmup (0: none).
        warmup_ratio: multiplier at step 0 of the warmup.
        min_ratio: multiplier at the end of the cosine (``eta_min / lr``).
    """

    def __init__(
        self, total_steps: int, warmup_steps: int = 0, warmup_ratio: float = 0.001, min_ratio: float = 0.0
    ) -> None:
        if warmup_steps < 0 or total_steps < 1:
            raise ValueError(f"need total_steps >= 1 and warmup_steps >= 0, got {total_steps}, {warmup_steps}")
        self.total_steps = int(total_steps)
        self.planned_steps = int(total_steps)  # total_steps before any fitting to a time budget
        self.warmup_steps = int(warmup_steps)
        self.warmup_ratio = float(warmup_ratio)
        self.min_ratio = float(min_ratio)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.warmup_ratio + (1.0 - self.warmup_ratio) * step / self.warmup_steps
        span = max(self.total_steps - self.warmup_steps, 1)
        progress = min((step - self.warmup_steps) / span, 1.0)
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(total_steps={self.total_steps}, warmup_steps={self.warmup_steps}, "
            f"warmup_ratio={self.warmup_ratio}, min_ratio={self.min_ratio})"
        )


class WarmupCosineLR(torch.optim.lr_scheduler.LambdaLR):
    """``LambdaLR`` over a :class:`WarmupCosine` (``self.lr_lambdas[0]``).

    It also resumes from checkpoints whose scheduler was the earlier LinearLR + CosineAnnealingLR chain
    (a ``SequentialLR`` state): it keeps their step count and warns that the schedule continues as this one.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: WarmupCosine) -> None:
        super().__init__(optimizer, schedule)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "lr_lambdas" in state_dict:
            super().load_state_dict(state_dict)
            return
        self.last_epoch = int(state_dict.get("last_epoch", 0))
        warnings.warn(
            f"scheduler state from an older detforge (keys {sorted(state_dict)[:4]}...): resuming the warmup + "
            f"cosine schedule at step {self.last_epoch}",
            stacklevel=2,
        )
        lrs = [base * fn(self.last_epoch) for base, fn in zip(self.base_lrs, self.lr_lambdas, strict=True)]
        for group, lr in zip(self.optimizer.param_groups, lrs, strict=True):
            group["lr"] = lr
        self._last_lr = lrs


def _timer(trainer: L.Trainer) -> Timer | None:
    return next((c for c in trainer.callbacks if isinstance(c, Timer)), None)


def _warmup_cosines(trainer: L.Trainer) -> list[WarmupCosine]:
    found = []
    for config in trainer.lr_scheduler_configs:
        for fn in getattr(config.scheduler, "lr_lambdas", ()):
            if isinstance(fn, WarmupCosine):
                found.append(fn)
    return found


class FitScheduleToTime(L.Callback):
    """Shorten a :class:`WarmupCosine` schedule to the steps that fit in the trainer's ``max_time``.

    Every ``every_n_steps`` optimizer steps it measures the wall time per step since the first step it saw
    (validation included), estimates how many steps the remaining time allows, and sets the schedule's
    ``total_steps`` to that (never above the planned total, never below the current step). Without a
    ``max_time``, or with another scheduler, it does nothing. Under DDP every rank takes rank 0's estimate.
    The schedule is re-measured after a resume.

    Args:
        every_n_steps: how often to re-estimate.
        min_steps: steps to measure before the first estimate.
    """

    def __init__(self, every_n_steps: int = 10, min_steps: int = 20) -> None:
        self.every_n_steps = int(every_n_steps)
        self.min_steps = int(min_steps)
        self._start: tuple[float, int] | None = None  # (wall time, global step) at the first step seen

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        timer = _timer(trainer)
        remaining = timer.time_remaining() if timer is not None else None
        if remaining is None:
            return
        step, now = trainer.global_step, time.monotonic()
        if self._start is None:
            self._start = (now, step)
            return
        measured = step - self._start[1]
        if measured < self.min_steps or step % self.every_n_steps:
            return
        seconds_per_step = (now - self._start[0]) / measured
        fits = step + int(max(remaining, 0.0) / seconds_per_step)
        fits = trainer.strategy.broadcast(fits, src=0)  # every DDP rank must follow the same learning rate
        for schedule in _warmup_cosines(trainer):
            schedule.total_steps = max(min(schedule.planned_steps, fits), step, schedule.warmup_steps + 1)
