"""Training engine around Lightning: run folders, callbacks, weight EMA, checkpoint evaluation, settings.

- ``detforge.engine.config``: ``MetricConfig``, ``LoggingConfig``, ``TransformConfig``; ``preprocess_images``;
  checkpoint hyper-parameters (``FORMAT_VERSION``, ``upgrade_hparams``).
- ``detforge.engine.optim``: ``create_optimizer``, ``configure_schedule`` (optimizer and scheduler factories).
- ``detforge.engine.metrics``: ``build_metrics`` (``MetricConfig`` -> metric modules), ``compute_metrics``.
- ``detforge.engine.ema``: ``ExponentialMovingAverage`` (validated and saved in place of the raw weights).
- ``detforge.engine.callbacks``: ``RunArtifacts`` (curves, PR curves, prediction grid, COCO table).
- ``detforge.engine.schedule``: ``WarmupCosine`` / ``WarmupCosineLR`` (the default schedule), ``FitScheduleToTime``.
- ``detforge.engine.trainer``: ``build_trainer`` and the run-folder helpers.
- ``detforge.engine.validate``: ``validate_checkpoint`` and ``load_detector``.
- ``detforge.engine.threads``: ``available_cpus``, ``configure_threads`` (fixed thread count for predict,
  bench, val); ``detforge.engine.adaptive_threads``: ``AdaptiveThreads`` (the training callback adapting it
  to a shared machine).

Submodules load on first use so ``import detforge.engine`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "MetricConfig": "detforge.engine.config",
    "LoggingConfig": "detforge.engine.config",
    "TransformConfig": "detforge.engine.config",
    "preprocess_images": "detforge.engine.config",
    "upgrade_hparams": "detforge.engine.config",
    "create_optimizer": "detforge.engine.optim",
    "configure_schedule": "detforge.engine.optim",
    "build_metrics": "detforge.engine.metrics",
    "compute_metrics": "detforge.engine.metrics",
    "ExponentialMovingAverage": "detforge.engine.ema",
    "RunArtifacts": "detforge.engine.callbacks",
    "WarmupCosine": "detforge.engine.schedule",
    "WarmupCosineLR": "detforge.engine.schedule",
    "FitScheduleToTime": "detforge.engine.schedule",
    "build_trainer": "detforge.engine.trainer",
    "validate_checkpoint": "detforge.engine.validate",
    "load_detector": "detforge.engine.validate",
    "AdaptiveThreads": "detforge.engine.adaptive_threads",
    "configure_threads": "detforge.engine.threads",
    "available_cpus": "detforge.engine.threads",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'detforge.engine' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
