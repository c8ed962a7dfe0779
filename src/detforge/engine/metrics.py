"""The metric factory of :class:`~detforge.models.detector.ObjectDetector`: ``MetricConfig`` -> metric modules.

:func:`build_metrics` turns a list of :class:`~detforge.engine.config.MetricConfig` (or their dicts, as held in
checkpoints) into the ``nn.ModuleDict`` of one stage; :func:`compute_metrics` computes and resets them.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from detforge.engine.config import MetricConfig
from detforge.engine.optim import import_class

__all__ = ["DEFAULT_METRICS", "build_metrics", "compute_metrics", "find_metric_class", "scalar_items"]

DEFAULT_METRICS = (
    MetricConfig(
        name="map",
        backend="torchmetrics",
        metric_class="DetectionMAP",
        params={"class_metrics": True},
        prog_bar=True,
    ),
)
"""Without ``metrics``: COCO mAP with per-class AP (``detforge.metrics.DetectionMAP``) on val and test."""


def find_metric_class(name: str) -> type:
    """The metric class ``name`` from ``detforge.metrics``, ``torchmetrics.detection`` or ``torchmetrics``."""
    import torchmetrics
    import torchmetrics.detection

    import detforge.metrics

    for module in (detforge.metrics, torchmetrics.detection, torchmetrics):
        if hasattr(module, name):
            return getattr(module, name)
    raise ValueError(
        f"unknown metric class {name!r}: not in detforge.metrics, torchmetrics.detection or torchmetrics "
        "(use backend='custom' with a dotted path for your own)"
    )


def build_metrics(configs: list[MetricConfig | dict] | None, stage: str) -> nn.ModuleDict:
    """The metrics of ``stage`` ("train", "val" or "test") by name; ``configs`` None: :data:`DEFAULT_METRICS`."""
    metrics = nn.ModuleDict()
    for cfg in DEFAULT_METRICS if configs is None else configs:
        cfg = MetricConfig(**cfg) if isinstance(cfg, dict) else cfg
        if stage not in cfg.stages:
            continue
        if cfg.backend == "custom":
            cls = import_class(cfg.metric_class, "metric")
        else:
            cls = find_metric_class(cfg.metric_class)
        metrics[cfg.name] = cls(**cfg.params)
    return metrics


def compute_metrics(metrics: nn.ModuleDict) -> dict[str, Any]:
    """Compute and reset every metric; one dict of their results (a metric returning a tensor is stored
    under its name). A metric with a ``last_result`` (``DetectionMAP``'s full COCO evaluation, precision
    arrays for PR curves) adds it as ``coco_eval``."""
    stats: dict[str, Any] = {}
    for name, metric in metrics.items():
        result = metric.compute()
        if getattr(metric, "last_result", None) is not None:
            stats["coco_eval"] = metric.last_result
        stats.update(result if isinstance(result, dict) else {name: result})
        metric.reset()
    return stats


def scalar_items(stats: dict[str, Any]) -> dict[str, Tensor]:
    """The entries of ``stats`` to log: one-element floating-point tensors."""
    return {
        k: v for k, v in stats.items() if isinstance(v, Tensor) and v.numel() == 1 and v.is_floating_point()
    }
