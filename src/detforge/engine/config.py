"""Plain-data settings the ObjectDetector takes: which metrics to compute, what extra to log, and how to
preprocess images at inference time. Dataclasses of plain types, so checkpoints and YAML configs hold them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["LoggingConfig", "MetricConfig", "TransformConfig"]

_BACKENDS = ("torchmetrics", "custom")
_STAGES = ("train", "val", "test")


@dataclass
class MetricConfig:
    """One metric to compute during training or evaluation.

    Attributes:
        name: key the metric is stored under (``val_metrics[name]``).
        backend: ``"torchmetrics"`` (``metric_class`` names a class in ``torchmetrics``,
            ``torchmetrics.detection`` or ``detforge.metrics``) or ``"custom"`` (a full dotted path).
        metric_class: class name, e.g. ``"MeanAveragePrecision"`` or ``"DetectionMAP"``.
        params: keyword arguments for the metric's constructor.
        stages: where the metric runs: any of ``"train"``, ``"val"``, ``"test"``.
        log_on_step / log_on_epoch / prog_bar: how its results are logged.
    """

    name: str
    backend: str
    metric_class: str
    params: dict[str, Any] = field(default_factory=dict)
    stages: list[str] = field(default_factory=lambda: ["val", "test"])
    log_on_step: bool = False
    log_on_epoch: bool = True
    prog_bar: bool = False

    def __post_init__(self) -> None:
        for key in ("name", "backend", "metric_class"):
            if not getattr(self, key):
                raise ValueError(f"MetricConfig.{key} must be a non-empty string")
        self.backend = self.backend.lower()
        if self.backend not in _BACKENDS:
            raise ValueError(f"MetricConfig.backend must be one of {_BACKENDS}, got {self.backend!r}")
        if not self.stages:
            raise ValueError(f"MetricConfig.stages must name at least one of {_STAGES}")
        self.stages = [s.lower() for s in self.stages]
        bad = [s for s in self.stages if s not in _STAGES]
        if bad:
            raise ValueError(f"MetricConfig.stages: unknown stage(s) {bad}; allowed: {_STAGES}")
        if self.backend == "custom" and "." not in self.metric_class:
            raise ValueError(
                f"MetricConfig.metric_class for backend 'custom' must be a dotted path like "
                f"'mypkg.metrics.MyMetric', got {self.metric_class!r}"
            )


@dataclass
class LoggingConfig:
    """Extra values to log while training.

    Attributes:
        log_learning_rate: log ``train/lr`` every step.
        log_gradient_norm: log ``train/grad_norm`` (global L2 norm of the gradients) every step.
        log_weight_norm: log ``train/weight_norm`` (global L2 norm of the weights) every step.
    """

    log_learning_rate: bool = False
    log_gradient_norm: bool = False
    log_weight_norm: bool = False


@dataclass
class TransformConfig:
    """Inference preprocessing for ``ObjectDetector.preprocess``.

    Attributes:
        image_size: square network input side in pixels; images are letterboxed (aspect kept, padded
            bottom/right with zeros) to it.
        use_timm_config: take mean / std from the backbone's pretrained config in timm (else ImageNet's).
        mean / std: override the normalisation; None keeps the resolved values.
        interpolation: resize interpolation, ``"bilinear"`` or ``"bicubic"`` or ``"nearest"``.
        normalize: apply (x - mean) / std in ``preprocess``. Detectors in detforge take images in [0, 1]
            and normalise inside, so this is False by default.
    """

    image_size: int = 640
    use_timm_config: bool = True
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    interpolation: str = "bilinear"
    normalize: bool = False

    def __post_init__(self) -> None:
        if self.image_size <= 0:
            raise ValueError(f"TransformConfig.image_size must be positive, got {self.image_size}")
        allowed = ("bilinear", "bicubic", "nearest")
        if self.interpolation not in allowed:
            raise ValueError(
                f"TransformConfig.interpolation must be one of {allowed}, got {self.interpolation!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
