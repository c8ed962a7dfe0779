"""Plain-data settings the ObjectDetector takes: which metrics to compute, what extra to log, and how to
preprocess images at inference time. Dataclasses of plain types, so checkpoints and YAML configs hold them.

Also what these settings resolve to (:func:`resolve_data_config`, :func:`preprocess_images`) and how they are
saved: plain types (:func:`as_plain`, :func:`model_spec`) under a :data:`FORMAT_VERSION`, with
:func:`upgrade_hparams` reading checkpoints written before it."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "FORMAT_VERSION",
    "LoggingConfig",
    "MetricConfig",
    "TransformConfig",
    "as_plain",
    "from_plain",
    "legacy_checkpoint_error",
    "load_checkpoint",
    "model_spec",
    "nonfinite_loss_error",
    "plain_hparams",
    "preprocess_images",
    "resolve_data_config",
    "scalar_losses",
    "upgrade_hparams",
]

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

    def norms(self, module: Any) -> dict[str, Any]:
        """The norms this config asks for, of ``module``'s parameters: ``grad_norm`` (the gradients present;
        0 when none) and ``weight_norm``, each a scalar Tensor."""
        import torch

        out: dict[str, Any] = {}
        if self.log_gradient_norm:
            grads = [p.grad for p in module.parameters() if p.grad is not None]
            out["grad_norm"] = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
        if self.log_weight_norm:
            out["weight_norm"] = torch.nn.utils.get_total_norm([p.detach() for p in module.parameters()])
        return out


def scalar_losses(losses: dict[str, Any]) -> dict[str, Any]:
    """The one-element Tensors of a model's ``loss`` dict (``loss``, ``cls_loss``, ..., ``num_pos``): what is
    logged as ``train/<key>``, ``val/<key>``."""
    from torch import Tensor

    return {k: v for k, v in losses.items() if isinstance(v, Tensor) and v.numel() == 1}


def nonfinite_loss_error(
    losses: dict[str, Any], targets: list[dict], step: int, batch_idx: int
) -> FloatingPointError:
    """The error for a NaN / inf training loss at optimizer ``step`` / ``batch_idx``, naming the batch's image
    ids and the loss parts."""
    from torch import Tensor

    ids = [t.get("image_id") for t in targets]
    ids = [int(i) if isinstance(i, Tensor) and i.numel() == 1 else i for i in ids]
    parts = {k: float(v.detach()) for k, v in scalar_losses(losses).items()}
    return FloatingPointError(
        f"training loss is {float(losses['loss'])} at step {step} (batch {batch_idx}, image ids {ids}; "
        f"losses {parts}): check these images' boxes, or lower the learning rate"
    )


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


def resolve_data_config(
    cfg: TransformConfig, in_chans: int, timm_name: str | dict[str, Any] | None = None
) -> dict[str, Any]:
    """``mean``, ``std``, ``input_size`` (C, H, W) and ``interpolation`` for ``cfg``: the statistics of timm's
    pretrained config for ``timm_name`` when ``cfg.use_timm_config`` (else ImageNet's), averaged over the
    channels for 1-channel images, unless ``cfg.mean`` / ``cfg.std`` override them. ``timm_name`` may be a
    saved ``FeatureBackboneConfig`` dict (its ``model_name``)."""
    if isinstance(timm_name, dict):
        timm_name = timm_name.get("model_name")
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    if cfg.use_timm_config and timm_name is not None:
        import timm

        pretrained = timm.get_pretrained_cfg(timm_name)
        if pretrained is not None:
            mean, std = tuple(pretrained.mean), tuple(pretrained.std)
    if in_chans == 1:
        mean, std = (sum(mean) / len(mean),), (sum(std) / len(std),)
    return {
        "mean": tuple(cfg.mean or mean),
        "std": tuple(cfg.std or std),
        "input_size": (in_chans, cfg.image_size, cfg.image_size),
        "interpolation": cfg.interpolation,
    }


def preprocess_images(images: Any, data_config: dict[str, Any], normalize: bool = False):
    """Letterbox images to the network input with the validation transforms
    (:func:`detforge.data.transforms.build_val_transforms`): keep the aspect ratio, pad bottom / right to
    the square ``input_size`` with grey 114, as ``detforge val`` and ``detforge predict`` feed the model.

    Args:
        images: a PIL image, a Tensor[C, H, W] (uint8, or float in [0, 1]: rounded to uint8 first, as images
            read from disk), a Tensor[B, C, H, W] or a list of these.
        data_config: :func:`resolve_data_config`'s dict (``input_size``, ``interpolation``, ``mean``, ``std``).
        normalize: subtract ``mean`` and divide by ``std`` after scaling to [0, 1].

    Returns:
        (Tensor[B, C, S, S] float, list of each image's unpadded (h, w) in the input): boxes map back to
        the original images with one scale per axis (``detforge.targets.to_original_size``).
    """
    import torch
    from PIL import Image
    from torchvision.transforms.v2 import InterpolationMode, Resize

    from detforge.data.transforms import build_val_transforms

    chans, size = data_config["input_size"][0], int(data_config["input_size"][-1])
    transform = build_val_transforms(
        size, normalize=normalize, mean=data_config["mean"], std=data_config["std"]
    )
    for step in transform.pipeline.transforms:
        if isinstance(step, Resize):
            step.interpolation = InterpolationMode(data_config["interpolation"])
    if isinstance(images, Image.Image) or (isinstance(images, torch.Tensor) and images.ndim == 3):
        images = [images]
    batch, sizes = [], []
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    for image in images:
        if isinstance(image, Image.Image):
            image = torch.as_tensor(_pil_array(image.convert("RGB" if chans == 3 else "L")))
        elif image.is_floating_point():
            image = (image.clamp(0, 1) * 255).round().to(torch.uint8)
        out, target = transform(image, dict(empty))
        batch.append(out)  # [C, S, S]
        sizes.append(tuple(int(v) for v in target["size"]))
    return torch.stack(batch), sizes  # [B, C, S, S]


def _pil_array(image):
    """A PIL image as a uint8 array [C, H, W]."""
    import numpy as np

    array = np.asarray(image, dtype=np.uint8)
    return (array[None] if array.ndim == 2 else array.transpose(2, 0, 1)).copy()


# ---------------------------------------------------------------------- ObjectDetector checkpoints
FORMAT_VERSION = 2
"""``hyper_parameters["format_version"]`` of ``ObjectDetector`` checkpoints. 2: model options default to None
(the model's own default) and a built model is saved as ``{"class_path", "init_args"}``. Checkpoints without
it were written before (format 1) and are translated by :func:`upgrade_hparams`."""

# Format 1 defaults of ObjectDetector's model options. A registered model (``model="detforge_n"``) got an
# option only when it differed from these; the autotimm form (``backbone=``) got them all.
_V1_DEFAULTS: dict[str, Any] = dict(
    fpn_channels=256,
    head_num_convs=4,
    focal_alpha=0.25,
    focal_gamma=2.0,
    cls_loss_weight=1.0,
    reg_loss_weight=1.0,
    centerness_loss_weight=1.0,
    score_thresh=0.05,
    nms_thresh=0.5,
    max_detections_per_image=100,
    regress_ranges=None,
)
_V1_STRIDES = (8, 16, 32, 64, 128)


def as_plain(value: Any) -> Any:
    """Dataclasses -> dicts, recursively, so hyper-parameters load with ``torch.load(weights_only=True)``."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    if isinstance(value, dict):
        return {k: as_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(as_plain(v) for v in value)
    return value


def from_plain(cls: type, value: Any) -> Any:
    """``cls(**value)`` for a dict (a dataclass saved by :func:`as_plain`), else ``value`` unchanged."""
    return cls(**value) if isinstance(value, dict) else value


def _is_plain(value: Any) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return all(_is_plain(v) for v in value)
    return value is None or isinstance(value, bool | int | float | str)


def model_spec(model: Any, built: Any) -> str | dict[str, Any] | None:
    """What a checkpoint keeps of ``ObjectDetector(model=...)``: the name (or None), or for a built module
    ``{"class_path": ..., "init_args": ...}`` from its recorded ``init_args`` (plain types); None when they
    are not plain (a module argument): load such a checkpoint with ``load_from_checkpoint(path, model=...)``."""
    if model is None or isinstance(model, str):
        return model
    init_args = as_plain(getattr(built, "init_args", None))
    if init_args is None or not _is_plain(init_args):
        return None
    cls = type(built)
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": init_args}


def plain_hparams(hparams: Any, model: Any, built: Any, **losses: Any) -> None:
    """Make ``ObjectDetector``'s saved ``hparams`` plain types (in place), so checkpoints load with
    ``torch.load(weights_only=True)``: dataclasses as dicts, a loss module (``losses``: ``cls_loss_fn``,
    ``reg_loss_fn``) as None, ``model`` as :func:`model_spec`, and the :data:`FORMAT_VERSION`."""
    for key in ("backbone", "metrics", "logging_config", "transform_config"):
        hparams[key] = as_plain(hparams[key])
    for key, value in losses.items():
        hparams[key] = value if isinstance(value, str) or value is None else None
    hparams["model"] = model_spec(model, built)
    hparams["format_version"] = FORMAT_VERSION


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def upgrade_hparams(hparams: dict[str, Any], source: Any = "checkpoint") -> dict[str, Any]:
    """``ObjectDetector`` hyper-parameters of a checkpoint in the current format (without ``format_version``).

    Format 1 (no ``format_version``): for a registered model, options at their format-1 defaults become None
    (the model's own default, which is what it got then: a ``detforge_n`` checkpoint keeps FCOS's NMS 0.6),
    and ``backbone``, ``strides`` and ``detection_arch`` (ignored then) become None; the autotimm form keeps
    every option (they were all passed), YOLOX's ``head_num_convs`` capped at 2 and the options it did not
    get dropped, as format 1 built it. A newer format raises a ValueError saying to upgrade detforge.
    """
    hparams = dict(hparams)
    version = hparams.pop("format_version", None)
    if version is not None:
        if int(version) > FORMAT_VERSION:
            raise ValueError(
                f"{source}: written by a newer detforge (checkpoint format {version}; this version reads up to "
                f"{FORMAT_VERSION}): upgrade detforge to load it"
            )
        return hparams
    if isinstance(hparams.get("model"), str):
        for key, default in _V1_DEFAULTS.items():
            if _same(hparams.get(key), default):
                hparams[key] = None
        hparams.update(backbone=None, strides=None, detection_arch=None)
    elif hparams.get("model") is None:
        hparams.update({k: v for k, v in _V1_DEFAULTS.items() if k not in hparams})
        hparams.setdefault("strides", _V1_STRIDES)
        hparams.setdefault("detection_arch", "fcos")
        if hparams["detection_arch"] == "yolox":
            hparams["head_num_convs"] = min(int(hparams["head_num_convs"]), 2)
            hparams.update(
                focal_alpha=None, focal_gamma=None, centerness_loss_weight=None, regress_ranges=None
            )
    return hparams


def load_checkpoint(checkpoint_path: Any, weights_only: bool | None = None) -> tuple[Any, int | None]:
    """An ``ObjectDetector`` checkpoint with its hyper-parameters in the current format (:func:`upgrade_hparams`),
    as an in-memory file for Lightning's ``load_from_checkpoint``, and the format version it was written in
    (None: before ``format_version``)."""
    import io

    import torch
    from lightning.fabric.utilities.cloud_io import _load as pl_load

    checkpoint = pl_load(checkpoint_path, map_location="cpu", weights_only=weights_only)
    hparams = checkpoint.get("hyper_parameters", {})
    version = hparams.get("format_version")
    checkpoint["hyper_parameters"] = upgrade_hparams(hparams, checkpoint_path)
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    buffer.seek(0)
    return buffer, version


def legacy_checkpoint_error(checkpoint_path: Any, err: Exception) -> ValueError:
    """The error for a format-1 checkpoint that fails to load even after :func:`upgrade_hparams`."""
    return ValueError(
        f"{checkpoint_path}: written by detforge before checkpoint format {FORMAT_VERSION} (no "
        f"format_version in its hyper-parameters) and cannot be loaded ({type(err).__name__}: {err}); "
        "retrain with this version, or build ObjectDetector(model=...) and load_state_dict(strict=False)"
    )
