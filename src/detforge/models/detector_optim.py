"""Optimisation hooks of :class:`~detforge.models.detector.ObjectDetector`: its optimizer and schedule (from the
hyper-parameters, through :mod:`detforge.engine.optim`), the EMA callback, and gradient-norm logging."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["OptimisationHooks"]


class OptimisationHooks:
    """Mixin of :class:`~detforge.models.detector.ObjectDetector` (reads ``self.model``, ``self.hparams``,
    ``self.trainer``, ``self.logging_config``; ``_backbone_body_prefix`` comes from ``BackboneTuning``)."""

    hparams: Any
    model: torch.nn.Module
    logging_config: Any

    def configure_callbacks(self) -> list:
        if self.hparams.ema_decay is None:
            return []
        from detforge.engine.ema import ExponentialMovingAverage

        return [
            ExponentialMovingAverage(
                decay=self.hparams.ema_decay, warmup_updates=self.hparams.ema_warmup_steps
            )
        ]

    def _total_steps(self, interval: str = "step") -> int:
        """Scheduler steps of the whole run: optimizer steps, or epochs for an ``interval="epoch"`` scheduler."""
        if interval == "epoch":
            return max(int(self.trainer.max_epochs or 1), 1)
        return max(int(self.trainer.estimated_stepping_batches), 1)

    def configure_optimizers(self) -> Any:
        from detforge.engine.optim import configure_schedule, create_optimizer

        hp = self.hparams
        lr_mult = hp.get("backbone_lr_mult")
        optimizer = create_optimizer(
            self.model,
            hp.optimizer,
            hp.lr,
            hp.weight_decay,
            hp.optimizer_kwargs,
            lr_multipliers=None if lr_mult is None else {self._backbone_body_prefix(): lr_mult},
            allow_fused="mixed" not in str(getattr(self._trainer, "precision", "")),  # bf16-mixed, 16-mixed
        )
        return configure_schedule(
            optimizer,
            hp.scheduler,
            hp.scheduler_kwargs,
            hp.lr,
            hp.warmup_steps,
            hp.warmup_ratio,
            self._total_steps,
        )

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        for key, norm in self.logging_config.norms(self).items():
            self.log(f"train/{key}", norm.to(self.device), on_step=True, on_epoch=False)
