"""``ObjectDetector``: the Lightning module that trains, validates and exports any detforge detector.

It wraps a bare detector (FCOS or YOLOX on a timm backbone, or any registered model such as ``"nexus"``)
that follows the model protocol: ``forward(images) -> raw outputs``, ``loss(outputs, targets)``,
``postprocess(outputs, image_sizes)``. One forward serves both the validation loss and the detections.

Logged names (as autotimm): ``train/loss``, ``train/cls_loss``, ``train/reg_loss``, ``train/centerness_loss``,
``train/num_pos``, ``val/loss``, ..., ``val/map``, ``val/map_50``, ...; ``train/lr``, ``train/grad_norm`` and
``train/weight_norm`` when a ``LoggingConfig`` asks for them.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import warnings
from typing import Any, Literal, get_args

import lightning as L
import torch
from torch import Tensor, nn

from detforge.engine.config import LoggingConfig, MetricConfig, TransformConfig
from detforge.engine.schedule import WarmupCosine, WarmupCosineLR
from detforge.models.backbone import FeatureBackboneConfig

__all__ = ["ObjectDetector", "metric_targets", "to_original_size"]

DetectionArch = Literal["fcos", "yolox"]
OptimizerName = Literal["adamw", "adam", "sgd", "rmsprop", "adamp", "sgdp", "lamb"]
SchedulerName = Literal["cosine", "step", "multistep", "onecycle"]

_TORCH_OPTIMIZERS = {
    "adamw": "torch.optim.AdamW",
    "adam": "torch.optim.Adam",
    "sgd": "torch.optim.SGD",
    "rmsprop": "torch.optim.RMSprop",
    "adamp": "timm.optim.AdamP",
    "sgdp": "timm.optim.SGDP",
    "lamb": "timm.optim.Lamb",
}


# ObjectDetector arguments that mean the same to a registered FCOS-style model's builder: handed to it when
# changed from their defaults (``model="detforge_n"``), so they are never silently ignored.
_REGISTRY_MODEL_ARGS = (
    "fpn_channels",
    "head_num_convs",
    "focal_alpha",
    "focal_gamma",
    "cls_loss_weight",
    "reg_loss_weight",
    "centerness_loss_weight",
    "score_thresh",
    "nms_thresh",
    "max_detections_per_image",
    "regress_ranges",
)

_FUSED_OPTIMIZERS = (torch.optim.AdamW, torch.optim.Adam, torch.optim.SGD)


def _fusable(groups: list[dict]) -> bool:
    """True when torch's fused optimizer kernels take every parameter (floating point, on CPU or CUDA)."""
    params = [p for group in groups for p in group["params"]]
    return bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)


def _import_class(path: str, what: str) -> type:
    if "." not in path:
        raise ValueError(f"{what} class must be a dotted path like 'torch.optim.AdamW', got {path!r}")
    module, name = path.rsplit(".", 1)
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"{what} class {path!r} cannot be imported: {err}") from err


def _as_plain(value: Any) -> Any:
    """Dataclasses -> dicts, recursively, so hyper-parameters load with ``torch.load(weights_only=True)``."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, list | tuple):
        return type(value)(_as_plain(v) for v in value)
    return value


def _from_plain(cls: type, value: Any) -> Any:
    return cls(**value) if isinstance(value, dict) else value


def to_original_size(
    items: list[dict], targets: list[dict], keys: tuple[str, ...] = ("boxes",)
) -> list[dict]:
    """Rescale each dict's xyxy ``keys`` (Tensor[K, 4], network-input pixels) to the original image.

    Args:
        items: per-image dicts (predictions or targets), one per entry of ``targets``.
        targets: the batch's target dicts; ``size`` (h, w) of the network input (unpadded) and ``orig_size``
            (h, w) of the image on disk. Without them the boxes are returned unchanged. Padding is
            bottom/right, so a per-axis scale maps a letterboxed image back exactly.
    """
    out = []
    for item, target in zip(items, targets, strict=True):
        item = dict(item)
        if "size" in target and "orig_size" in target:
            (h, w), (oh, ow) = target["size"].tolist(), target["orig_size"].tolist()
            if (h, w) != (oh, ow):
                for key in keys:
                    scale = item[key].new_tensor([ow / w, oh / h, ow / w, oh / h])  # [4]
                    item[key] = item[key] * scale  # [K, 4]
        out.append(item)
    return out


def metric_targets(targets: list[dict]) -> list[dict]:
    """Ground truth for the metric in original-image pixels: ``boxes``, ``labels`` and, when present,
    ``iscrowd``, ``ignore`` and ``area`` (scaled with the boxes, so COCO's area ranges match the file's)."""
    out = []
    for target in targets:
        gt = {"boxes": target["boxes"], "labels": target["labels"]}
        for key in ("iscrowd", "ignore", "area"):
            if isinstance(target.get(key), Tensor) and target[key].shape[:1] == target["labels"].shape[:1]:
                gt[key] = target[key]
        if "area" in gt and "size" in target and "orig_size" in target:
            (h, w), (oh, ow) = target["size"].tolist(), target["orig_size"].tolist()
            gt["area"] = gt["area"] * (oh / h) * (ow / w)
        out.append(gt)
    return to_original_size(out, targets)


class ObjectDetector(L.LightningModule):
    """Train, validate, test and export a detector with Lightning.

    Args:
        backbone: timm model name, or a ``FeatureBackboneConfig`` (or its dict), for the FPN detectors.
        num_classes: number of object classes (no background class).
        detection_arch: ``"fcos"`` or ``"yolox"`` (ignored when ``model`` names a registered model).
        cls_loss_fn / reg_loss_fn: a loss registry name (``detforge.losses.list_losses()``), an ``nn.Module``,
            or None for the architecture's default (focal / GIoU).
        metrics: list of ``MetricConfig``; default: ``detforge.metrics.DetectionMAP`` on val and test.
        logging_config: extra values to log (``LoggingConfig``).
        transform_config: enables ``preprocess(image)`` and ``get_data_config()``.
        lr / weight_decay: optimizer learning rate and weight decay (no decay on biases and norm layers).
        optimizer: ``"adamw"``, ``"adam"``, ``"sgd"``, ``"rmsprop"``, timm's ``"adamp"``, ``"sgdp"``, ``"lamb"``,
            or ``{"class": "pkg.Cls", "params": {...}}``.
        optimizer_kwargs: extra optimizer keyword arguments. AdamW, Adam and SGD use torch's fused kernels unless
            ``fused`` or ``foreach`` is given here.
        scheduler: ``"cosine"``, ``"step"``, ``"multistep"``, ``"onecycle"``, ``{"class": ..., "params": ...}``
            or None. Stepped every optimizer step unless ``scheduler_kwargs["interval"] == "epoch"``.
        scheduler_kwargs: extra scheduler keyword arguments (plus ``interval`` and ``frequency``).
        fpn_channels / head_num_convs: FPN width and convs per head branch.
        focal_alpha / focal_gamma: focal loss parameters.
        cls_loss_weight / reg_loss_weight / centerness_loss_weight: loss weights.
        score_thresh / nms_thresh / max_detections_per_image: postprocessing.
        freeze_backbone: freeze the backbone's weights and BatchNorm statistics.
        strides: FPN level strides, P3-P7 by default.
        regress_ranges: per-level (min, max) box-size ranges for FCOS assignment; None: FCOS's defaults
            for the strides ((-1, 64), (64, 128), (128, 256), (256, 512), (512, inf) on P3-P7).
        compile_model / compile_kwargs: ``torch.compile`` the detector (``nn.Module.compile``; state-dict keys
            stay the same).
        seed: seed everything (Python, NumPy, torch, dataloader workers) when not None.
        deterministic: with ``seed``, ask torch for deterministic algorithms (warn-only).
        model: a registered model name (``detforge models``) to wrap instead of building FCOS / YOLOX;
            ``backbone`` and ``strides`` are then ignored. The builder gets the model arguments above
            (``fpn_channels``, ``head_num_convs``, the losses and their weights, ``regress_ranges`` and the
            postprocess settings) that differ from their defaults; a model that does not take one raises.
        model_kwargs: extra keyword arguments for the model builder.
        warmup_steps: linear learning-rate warmup over this many optimizer steps (from ``warmup_ratio * lr``).
        warmup_ratio: starting fraction of the learning rate during warmup.
        ema_decay: keep an exponential moving average of the weights with this decay; validation and
            checkpoints use it. None disables.
        ema_warmup_steps: optimizer steps over which the EMA decay ramps up.
        class_names: optional class names, saved with the checkpoint for tables and drawings.
        in_chans: input image channels (3 RGB, 1 thermal / grayscale).
        imgsz: the square input size the model trains at; ``val``, ``predict`` and ``export`` default to it.
    """

    def __init__(
        self,
        backbone: str | FeatureBackboneConfig | dict | None = None,
        num_classes: int = 80,
        detection_arch: DetectionArch = "fcos",
        cls_loss_fn: str | nn.Module | None = None,
        reg_loss_fn: str | nn.Module | None = None,
        metrics: list[MetricConfig] | None = None,
        logging_config: LoggingConfig | None = None,
        transform_config: TransformConfig | None = None,
        lr: float = 1e-4,
        weight_decay: float = 1e-4,
        optimizer: OptimizerName | dict[str, Any] = "adamw",
        optimizer_kwargs: dict[str, Any] | None = None,
        scheduler: SchedulerName | dict[str, Any] | None = "cosine",
        scheduler_kwargs: dict[str, Any] | None = None,
        fpn_channels: int = 256,
        head_num_convs: int = 4,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        cls_loss_weight: float = 1.0,
        reg_loss_weight: float = 1.0,
        centerness_loss_weight: float = 1.0,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        max_detections_per_image: int = 100,
        freeze_backbone: bool = False,
        strides: tuple[int, ...] = (8, 16, 32, 64, 128),
        regress_ranges: tuple[tuple[float, float], ...] | None = None,
        compile_model: bool = True,
        compile_kwargs: dict[str, Any] | None = None,
        seed: int | None = None,
        deterministic: bool = True,
        model: str | None = None,
        model_kwargs: dict[str, Any] | None = None,
        warmup_steps: int = 0,
        warmup_ratio: float = 0.001,
        ema_decay: float | None = None,
        ema_warmup_steps: float = 2000.0,
        class_names: list[str] | None = None,
        in_chans: int = 3,
        imgsz: int | None = None,
    ) -> None:
        if seed is not None:
            L.seed_everything(seed, workers=True, verbose=False)
            if deterministic:
                torch.use_deterministic_algorithms(True, warn_only=True)
        elif deterministic:
            warnings.warn("ObjectDetector: deterministic=True has no effect without a seed", stacklevel=2)
        super().__init__()
        self._check_choices(detection_arch, optimizer, scheduler, num_classes, warmup_steps, ema_decay)
        if backbone is None and model is None:
            raise ValueError("ObjectDetector needs a backbone (timm name) or model (a registered model name)")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names but num_classes={num_classes}")

        self.save_hyperparameters(ignore=["cls_loss_fn", "reg_loss_fn"])
        # Plain types only, so checkpoints load with torch.load(weights_only=True).
        for key in ("backbone", "metrics", "logging_config", "transform_config"):
            self.hparams[key] = _as_plain(self.hparams[key])
        for key, value in (("cls_loss_fn", cls_loss_fn), ("reg_loss_fn", reg_loss_fn)):
            self.hparams[key] = value if isinstance(value, str) or value is None else None

        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names is not None else None
        self.model = self._build_model(
            backbone=_from_plain(FeatureBackboneConfig, backbone),
            model_name=model,
            cls_loss_fn=cls_loss_fn,
            reg_loss_fn=reg_loss_fn,
        )
        if freeze_backbone:
            from detforge.models.backbone import freeze_backbone as freeze

            backbone_module = getattr(self.model, "backbone", None)
            if backbone_module is None:  # FCOS / YOLOX keep the timm body inside their pyramid
                backbone_module = getattr(getattr(self.model, "features", None), "body", None)
            if not isinstance(backbone_module, nn.Module):
                raise ValueError(
                    f"freeze_backbone=True but model {type(self.model).__name__} has no backbone"
                )
            freeze(backbone_module)

        self.logging_config = _from_plain(LoggingConfig, logging_config) or LoggingConfig()
        self.val_metrics = self._build_metrics(metrics, "val")
        self.test_metrics = self._build_metrics(metrics, "test")
        self.last_val_stats: dict[str, Any] | None = None

        self.transform_config = _from_plain(TransformConfig, transform_config)
        self._data_config = self._resolve_data_config() if self.transform_config is not None else None

        if compile_model:
            self.model.compile(**(compile_kwargs or {}))
        elif compile_kwargs is not None:
            warnings.warn("ObjectDetector: compile_kwargs is ignored when compile_model=False", stacklevel=2)

    # ------------------------------------------------------------------ construction
    @staticmethod
    def _check_choices(detection_arch, optimizer, scheduler, num_classes, warmup_steps, ema_decay) -> None:
        if detection_arch not in get_args(DetectionArch):
            raise ValueError(
                f"detection_arch must be one of {get_args(DetectionArch)}, got {detection_arch!r}"
            )
        if isinstance(optimizer, str) and optimizer.lower() not in _TORCH_OPTIMIZERS:
            raise ValueError(
                f"optimizer must be one of {tuple(_TORCH_OPTIMIZERS)} or a dict with 'class', got {optimizer!r}"
            )
        if isinstance(optimizer, dict) and "class" not in optimizer:
            raise ValueError(
                f"optimizer dict needs a 'class' key (dotted path), got keys {sorted(optimizer)}"
            )
        if isinstance(scheduler, str) and scheduler.lower() not in (*get_args(SchedulerName), "none"):
            raise ValueError(
                f"scheduler must be one of {get_args(SchedulerName)}, a dict with 'class', or None; "
                f"got {scheduler!r}"
            )
        if isinstance(scheduler, dict) and "class" not in scheduler:
            raise ValueError(
                f"scheduler dict needs a 'class' key (dotted path), got keys {sorted(scheduler)}"
            )
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        if ema_decay is not None and not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1) or None, got {ema_decay}")

    def _changed_model_arguments(self, cls_loss_fn, reg_loss_fn) -> dict[str, Any]:
        """The model-building arguments (``fpn_channels``, losses, postprocess settings, ...) set to something
        other than their default, to hand to a registered model's builder instead of dropping them."""
        defaults = inspect.signature(type(self).__init__).parameters
        given = {key: self.hparams[key] for key in _REGISTRY_MODEL_ARGS}
        given.update(cls_loss_fn=cls_loss_fn, reg_loss_fn=reg_loss_fn)
        return {key: value for key, value in given.items() if value != defaults[key].default}

    def _build_model(self, backbone, model_name, cls_loss_fn, reg_loss_fn) -> nn.Module:
        hp = self.hparams
        extra = dict(hp.model_kwargs or {})
        if model_name is not None:
            from detforge.models.registry import create_model

            extra.setdefault(
                "in_chans", hp.in_chans
            )  # every builder takes it: 1-channel data builds 1-channel models
            passed = self._changed_model_arguments(cls_loss_fn, reg_loss_fn)
            for key, value in passed.items():
                extra.setdefault(key, value)  # model_kwargs wins
            try:
                model = create_model(model_name, num_classes=hp.num_classes, **extra)
            except TypeError as err:
                if "unexpected keyword argument" not in str(err) or not passed:
                    raise
                raise ValueError(
                    f"model {model_name!r} does not take one of the arguments given for it: {sorted(passed)} "
                    f"({err})"
                ) from err
            chans = getattr(model, "in_chans", hp.in_chans)
            if chans != hp.in_chans:
                raise ValueError(
                    f"model {model_name!r} takes {chans}-channel images but the data has {hp.in_chans} channels "
                    f"(for 1-channel models use thermal / grayscale data, e.g. --data synthetic-thermal)"
                )
            return model
        if isinstance(backbone, str):
            backbone = FeatureBackboneConfig(backbone)
        strides = tuple(hp.strides)
        kwargs = dict(
            backbone=backbone,
            num_classes=hp.num_classes,
            in_chans=hp.in_chans,
            fpn_channels=hp.fpn_channels,
            extra_levels=len(strides) - len(backbone.out_indices),
            cls_loss_weight=hp.cls_loss_weight,
            reg_loss_weight=hp.reg_loss_weight,
            score_thresh=hp.score_thresh,
            nms_thresh=hp.nms_thresh,
            max_detections_per_image=hp.max_detections_per_image,
        )
        if reg_loss_fn is not None:
            kwargs["reg_loss_fn"] = reg_loss_fn
        if hp.imgsz is not None:
            kwargs["input_size"] = (hp.imgsz, hp.imgsz)
        if hp.detection_arch == "fcos":
            from detforge.models.fcos import FCOS

            if cls_loss_fn is not None:
                kwargs["cls_loss_fn"] = cls_loss_fn
            model = FCOS(
                **kwargs,
                head_num_convs=hp.head_num_convs,
                focal_alpha=hp.focal_alpha,
                focal_gamma=hp.focal_gamma,
                centerness_loss_weight=hp.centerness_loss_weight,
                regress_ranges=hp.regress_ranges,
                **extra,
            )
        else:
            from detforge.losses import get_loss
            from detforge.models.yolox import YOLOX

            if cls_loss_fn == "focal":
                cls_loss_fn = get_loss("focal", alpha=hp.focal_alpha, gamma=hp.focal_gamma, reduction="sum")
            if cls_loss_fn is not None:
                kwargs["cls_loss_fn"] = cls_loss_fn
            # YOLOX's decoupled head uses at most 2 convs per branch (as autotimm does)
            model = YOLOX(**kwargs, head_num_convs=min(hp.head_num_convs, 2), **extra)
        if tuple(model.strides) != strides:
            raise ValueError(
                f"strides={strides} do not match backbone {backbone.model_name!r} with out_indices "
                f"{tuple(backbone.out_indices)}: its pyramid has strides {tuple(model.strides)}"
            )
        return model

    def _build_metrics(self, configs: list | None, stage: str) -> nn.ModuleDict:
        if configs is None:
            configs = [
                MetricConfig(
                    name="map",
                    backend="torchmetrics",
                    metric_class="DetectionMAP",
                    params={"class_metrics": True},
                    prog_bar=True,
                )
            ]
        metrics = nn.ModuleDict()
        for cfg in configs:
            cfg = _from_plain(MetricConfig, cfg)
            if stage not in cfg.stages:
                continue
            if cfg.backend == "custom":
                cls = _import_class(cfg.metric_class, "metric")
            else:
                cls = self._find_metric_class(cfg.metric_class)
            metrics[cfg.name] = cls(**cfg.params)
        return metrics

    @staticmethod
    def _find_metric_class(name: str) -> type:
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

    # ------------------------------------------------------------------ steps
    def forward(self, images: Tensor) -> dict[str, Any]:
        """Raw head outputs for ``images`` (Tensor[B, C, H, W], float in [0, 1])."""
        return self.model(images)

    def _image_sizes(self, images: Tensor, targets: list[dict] | None) -> list[tuple[int, int]]:
        from detforge.targets import image_sizes_of

        if targets is None:
            return [tuple(images.shape[-2:])] * images.shape[0]
        return image_sizes_of(targets, images)

    def _log_losses(self, stage: str, losses: dict[str, Tensor], batch_size: int) -> None:
        on_step = stage == "train"
        for key, value in losses.items():
            if not isinstance(value, Tensor) or value.numel() != 1:
                continue
            self.log(
                f"{stage}/{key}",
                value.detach().float(),
                prog_bar=key == "loss",
                on_step=on_step,
                on_epoch=not on_step,
                batch_size=batch_size,
                sync_dist=not on_step,
            )

    def training_step(self, batch: tuple[Tensor, list[dict]], batch_idx: int) -> Tensor:
        images, targets = batch
        outputs = self.model(images)
        losses = self.model.loss(outputs, targets)  # normalised by positives averaged over DDP ranks
        self._log_losses("train", losses, images.shape[0])
        if self.logging_config.log_learning_rate:
            self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False)
        return losses["loss"]

    def _eval_step(self, batch, stage: str, metrics: nn.ModuleDict) -> list[dict]:
        images, targets = batch
        outputs = self.model(images)
        losses = self.model.loss(outputs, targets)
        self._log_losses(stage, losses, images.shape[0])
        preds = self.model.postprocess(outputs, self._image_sizes(images, targets))
        preds = to_original_size(preds, targets)
        gts = metric_targets(targets)
        for metric in metrics.values():
            metric.update(preds, gts)
        return preds

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "val", self.val_metrics)

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "test", self.test_metrics)

    def _log_metrics(self, stage: str, metrics: nn.ModuleDict) -> dict[str, Any]:
        stats: dict[str, Any] = {}
        for name, metric in metrics.items():
            result = metric.compute()
            if getattr(metric, "last_result", None) is not None:
                stats["coco_eval"] = (
                    metric.last_result
                )  # full COCOEvalResult (precision arrays for PR curves)
            if not isinstance(result, dict):
                result = {name: result}
            for key, value in result.items():
                stats[key] = value
                if isinstance(value, Tensor) and value.numel() == 1 and value.is_floating_point():
                    self.log(f"{stage}/{key}", value.float(), prog_bar=key == "map", sync_dist=False)
            metric.reset()
        return stats

    def on_validation_epoch_end(self) -> None:
        stats = self._log_metrics("val", self.val_metrics)
        if not self.trainer.sanity_checking:
            self.last_val_stats = stats

    def on_test_epoch_end(self) -> None:
        self.last_test_stats = self._log_metrics("test", self.test_metrics)

    @torch.no_grad()
    def predict(self, images: Tensor, image_sizes: list[tuple[int, int]] | None = None) -> list[dict]:
        """Detections for ``images`` (Tensor[B, C, H, W] in [0, 1]) in their pixels: list of dict(boxes
        Tensor[K, 4] xyxy, scores Tensor[K], labels Tensor[K] int64). ``image_sizes``: unpadded (h, w) each."""
        sizes = image_sizes or self._image_sizes(images, None)
        return self.model.postprocess(self.model(images), sizes)

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> list[dict]:
        if isinstance(batch, Tensor):
            return self.predict(batch)
        images, targets = batch
        return to_original_size(self.predict(images, self._image_sizes(images, targets)), targets)

    # ------------------------------------------------------------------ optimisation
    def configure_callbacks(self) -> list:
        if self.hparams.ema_decay is None:
            return []
        from detforge.engine.ema import ExponentialMovingAverage

        return [
            ExponentialMovingAverage(
                decay=self.hparams.ema_decay, warmup_updates=self.hparams.ema_warmup_steps
            )
        ]

    def _param_groups(self) -> list[dict]:
        decay, no_decay = [], []
        for name, param in self.model.named_parameters():
            if not param.requires_grad:
                continue
            (no_decay if param.ndim <= 1 or name.endswith(".bias") else decay).append(param)
        return [
            {"params": decay, "weight_decay": self.hparams.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]

    def _create_optimizer(self) -> torch.optim.Optimizer:
        hp = self.hparams
        kwargs = {"lr": hp.lr, **(hp.optimizer_kwargs or {})}
        if isinstance(hp.optimizer, dict):
            cls = _import_class(hp.optimizer["class"], "optimizer")
            kwargs.update(hp.optimizer.get("params", {}))
        else:
            cls = _import_class(_TORCH_OPTIMIZERS[hp.optimizer.lower()], "optimizer")
        groups = self._param_groups()
        if cls in _FUSED_OPTIMIZERS and not {"fused", "foreach"} & set(kwargs) and _fusable(groups):
            kwargs["fused"] = True  # one kernel for all parameters: AdamW's step 1.9 ms instead of 7.7 (CPU)
        if "weight_decay" in kwargs:  # an explicit weight decay wins over the default split
            for group in groups[:1]:
                group["weight_decay"] = kwargs.pop("weight_decay")
        return cls(groups, **kwargs)

    def _total_steps(self, interval: str = "step") -> int:
        """Scheduler steps of the whole run: optimizer steps, or epochs for an ``interval="epoch"`` scheduler."""
        if interval == "epoch":
            return max(int(self.trainer.max_epochs or 1), 1)
        return max(int(self.trainer.estimated_stepping_batches), 1)

    def _create_scheduler(self, optimizer: torch.optim.Optimizer, kwargs: dict, interval: str) -> Any:
        hp = self.hparams
        sched = torch.optim.lr_scheduler
        if isinstance(hp.scheduler, dict):
            cls = _import_class(hp.scheduler["class"], "scheduler")
            return cls(optimizer, **{**kwargs, **hp.scheduler.get("params", {})})
        name = hp.scheduler.lower()
        warmup = hp.warmup_steps
        if name == "cosine":  # warmup and cosine in one multiplier, so a time budget can shorten it
            t_max = kwargs.pop("T_max", max(self._total_steps(interval) - warmup, 1))
            min_ratio = kwargs.pop("eta_min", 0.0) / hp.lr
            if kwargs:
                raise ValueError(f"unknown scheduler_kwargs for 'cosine': {sorted(kwargs)} (T_max, eta_min)")
            return WarmupCosineLR(optimizer, WarmupCosine(warmup + t_max, warmup, hp.warmup_ratio, min_ratio))
        if name == "step":
            return sched.StepLR(
                optimizer, step_size=kwargs.pop("step_size", 8), gamma=kwargs.pop("gamma", 0.1), **kwargs
            )
        if name == "multistep":
            milestones = kwargs.pop("milestones", [8, 11])
            return sched.MultiStepLR(
                optimizer, milestones=milestones, gamma=kwargs.pop("gamma", 0.1), **kwargs
            )
        total = kwargs.pop("total_steps", max(self._total_steps(interval) - warmup, 1))
        return sched.OneCycleLR(
            optimizer, max_lr=kwargs.pop("max_lr", hp.lr * 10), total_steps=total, **kwargs
        )

    def configure_optimizers(self) -> dict:
        hp = self.hparams
        optimizer = self._create_optimizer()
        kwargs = dict(hp.scheduler_kwargs or {})
        interval = kwargs.pop("interval", "step")
        frequency = kwargs.pop("frequency", 1)
        if hp.warmup_steps > 0 and interval != "step":
            raise ValueError("warmup_steps needs a scheduler stepped per step (scheduler_kwargs interval='step')")
        has_main = hp.scheduler is not None and hp.scheduler != "none"
        scheduler = self._create_scheduler(optimizer, kwargs, interval) if has_main else None
        if hp.warmup_steps > 0 and not isinstance(scheduler, WarmupCosineLR):  # cosine has the warmup built in
            warm = torch.optim.lr_scheduler.LinearLR(
                optimizer, start_factor=hp.warmup_ratio, end_factor=1.0, total_iters=hp.warmup_steps
            )
            if scheduler is None:
                scheduler = warm
            else:
                scheduler = torch.optim.lr_scheduler.SequentialLR(
                    optimizer, [warm, scheduler], milestones=[hp.warmup_steps]
                )
        if scheduler is None:
            return {"optimizer": optimizer}
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": interval, "frequency": frequency},
        }

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        cfg = self.logging_config
        if cfg.log_gradient_norm:
            grads = [p.grad for p in self.parameters() if p.grad is not None]
            norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=self.device)
            self.log("train/grad_norm", norm, on_step=True, on_epoch=False)
        if cfg.log_weight_norm:
            norm = torch.nn.utils.get_total_norm([p.detach() for p in self.parameters()])
            self.log("train/weight_norm", norm, on_step=True, on_epoch=False)

    # ------------------------------------------------------------------ inference helpers
    def _resolve_data_config(self) -> dict[str, Any]:
        cfg = self.transform_config
        mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
        backbone = self.hparams.backbone
        name = backbone.get("model_name") if isinstance(backbone, dict) else backbone
        if cfg.use_timm_config and name is not None and self.hparams.model is None:
            import timm

            pretrained = timm.get_pretrained_cfg(name)
            if pretrained is not None:
                mean, std = tuple(pretrained.mean), tuple(pretrained.std)
        if self.hparams.in_chans == 1:
            mean, std = (sum(mean) / len(mean),), (sum(std) / len(std),)
        return {
            "mean": tuple(cfg.mean or mean),
            "std": tuple(cfg.std or std),
            "input_size": (self.hparams.in_chans, cfg.image_size, cfg.image_size),
            "interpolation": cfg.interpolation,
        }

    def get_data_config(self) -> dict[str, Any]:
        """``mean``, ``std``, ``input_size`` (C, H, W) and ``interpolation``; needs a ``transform_config``."""
        if self._data_config is None:
            raise RuntimeError(
                "get_data_config() needs ObjectDetector(transform_config=TransformConfig(...))"
            )
        return dict(self._data_config)

    def preprocess(self, images: Any) -> Tensor:
        """Letterbox PIL images / uint8 or float tensors (C, H, W) to the network input: Tensor[B, C, S, S].

        Aspect ratio is kept and padding goes bottom/right, so boxes map back with ``scale_boxes``.
        """
        from PIL import Image
        from torchvision.transforms.v2 import InterpolationMode
        from torchvision.transforms.v2 import functional as F

        cfg = self.get_data_config()
        size = cfg["input_size"][-1]
        if isinstance(images, Image.Image | Tensor) and not (isinstance(images, Tensor) and images.ndim == 4):
            images = [images]
        batch = []
        for image in images:
            if isinstance(image, Image.Image):
                image = F.pil_to_tensor(image.convert("RGB" if self.hparams.in_chans == 3 else "L"))
            image = F.to_dtype(image, torch.float32, scale=True)  # [C, H, W] in [0, 1]
            h, w = image.shape[-2:]
            scale = size / max(h, w)
            nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
            image = F.resize(
                image, [nh, nw], interpolation=InterpolationMode(cfg["interpolation"]), antialias=True
            )
            image = F.pad(image, [0, 0, size - nw, size - nh])  # [C, S, S]
            if self.transform_config.normalize:
                image = F.normalize(image, cfg["mean"], cfg["std"])
            batch.append(image)
        return torch.stack(batch)  # [B, C, S, S]

    def to_onnx(
        self,
        save_path: str,
        example_input: Tensor | None = None,
        opset_version: int = 17,
        dynamic_axes: dict[str, dict[int, str]] | None = None,
        with_nms: bool = False,
        **kwargs: Any,
    ) -> str:
        """Export the detector to ONNX: raw head tensors, or with ``with_nms`` final ``boxes`` / ``scores`` /
        ``labels`` with decoding and NMS inside the graph. Returns ``save_path``."""
        from detforge.export import export_onnx

        was_training = self.training
        self.eval()
        try:
            return export_onnx(
                self.model,
                save_path,
                example_input=example_input,
                opset_version=opset_version,
                dynamic_axes=dynamic_axes,
                with_nms=with_nms,
                **kwargs,
            )
        finally:
            self.train(was_training)
