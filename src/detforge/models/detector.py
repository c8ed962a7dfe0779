"""``ObjectDetector``: the Lightning module that trains, validates and exports any detforge detector.

One construction path: the model is a registered name (``model="detforge_n"``, ``detforge models``) or a built
:class:`~detforge.models.base.Detector` (``class_path`` / ``init_args`` in a YAML config). The autotimm form
``ObjectDetector(backbone="resnet50", detection_arch="fcos", fpn_channels=256, ...)`` builds the registered
``fcos_resnet50`` the same way. Model options left at None keep the model's own defaults; every option set is
handed to the model's builder, and one the builder does not take raises a ValueError naming it and the model.
The module itself only trains: optimizer and scheduler (:mod:`detforge.engine.optim`), warmup, EMA, metrics
(:mod:`detforge.engine.metrics`), logging and freezing. Training and validation call the model's
``forward_loss(images, targets)``, so one forward serves the loss and the detections.

Logged names (as autotimm): ``train/loss``, ``train/cls_loss``, ``train/reg_loss``, ``train/centerness_loss``,
``train/num_pos``, ``val/loss``, ..., ``val/map``, ``val/map_50``, ...; ``train/lr``, ``train/grad_norm`` and
``train/weight_norm`` when a ``LoggingConfig`` asks for them.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Literal, get_args

import lightning as L
import torch
from torch import Tensor, nn

from detforge.engine.config import (
    FORMAT_VERSION,
    LoggingConfig,
    MetricConfig,
    TransformConfig,
    as_plain,
    model_spec,
    upgrade_hparams,
)
from detforge.engine.optim import OptimizerName, SchedulerName, check_optimizer, check_scheduler
from detforge.models.backbone import FeatureBackboneConfig
from detforge.models.base import Detector, NMSMethod
from detforge.targets import metric_targets, to_original_size

__all__ = [
    "FORMAT_VERSION",
    "MODEL_OPTIONS",
    "ObjectDetector",
    "build_model",
    "metric_targets",
    "to_original_size",
]

DetectionArch = Literal["fcos", "yolox"]

MODEL_OPTIONS: tuple[str, ...] = (
    "fpn_channels",
    "head_num_convs",
    "focal_alpha",
    "focal_gamma",
    "cls_loss_fn",
    "reg_loss_fn",
    "cls_loss_weight",
    "reg_loss_weight",
    "centerness_loss_weight",
    "regress_ranges",
    "score_thresh",
    "nms_thresh",
    "pre_nms_topk",
    "max_detections_per_image",
    "nms_method",
    "soft_nms_sigma",
)
"""ObjectDetector's model options: None keeps the model's default, a value goes to the model's builder."""


class ObjectDetector(L.LightningModule):
    """Train, validate, test and export a detector with Lightning.

    Args:
        model: a registered model name (``detforge.models.list_models()``), a built ``Detector``, or None with
            ``backbone`` (the autotimm form: the registered ``<detection_arch>_<timm name>``).
        backbone: timm model name, or a ``FeatureBackboneConfig`` (or its dict), for the autotimm form.
        detection_arch: ``"fcos"`` (None: fcos) or ``"yolox"``, for the autotimm form.
        num_classes: object classes (no background class); None: the model's own.
        in_chans: input image channels (3 RGB, 1 thermal / grayscale); every builder gets it.
        imgsz: the square input size the model trains at; ``val``, ``predict`` and ``export`` default to it
            (the autotimm form also builds the model for it: ``input_size``).
        fpn_channels, head_num_convs, focal_alpha, focal_gamma, cls_loss_fn, reg_loss_fn, cls_loss_weight,
        reg_loss_weight, centerness_loss_weight, regress_ranges, score_thresh, nms_thresh, pre_nms_topk,
        max_detections_per_image, nms_method, soft_nms_sigma: model options; None keeps the model's default,
            a value is handed to the builder (a ValueError when it does not take it). A post-processing
            setting the builder does not take is set on the built ``Detector`` (``set_postprocess``).
        strides: the pyramid's strides; the model is built with the matching ``extra_levels``, and a model
            whose strides cannot be set so raises. None: the model's own.
        model_kwargs: further keyword arguments for the builder (they win over the options above).
        metrics: list of ``MetricConfig``; default: ``detforge.metrics.DetectionMAP`` on val and test.
        logging_config: extra values to log (``LoggingConfig``).
        transform_config: enables ``preprocess(image)`` and ``get_data_config()``.
        lr / weight_decay: optimizer learning rate and weight decay (no decay on biases and norm layers).
        optimizer / optimizer_kwargs: see :func:`detforge.engine.optim.create_optimizer`.
        scheduler / scheduler_kwargs: ``"cosine"``, ``"onecycle"`` (per step), ``"step"``, ``"multistep"``
            (per epoch), a dict or None; see :func:`detforge.engine.optim.configure_schedule`.
        warmup_steps / warmup_ratio: linear learning-rate warmup over this many optimizer steps from
            ``warmup_ratio * lr``.
        ema_decay / ema_warmup_steps: keep an exponential moving average of the weights (validation and
            checkpoints use it); None disables.
        freeze_backbone: freeze the backbone (``freeze_backbone()``) right away.
        compile_model / compile_kwargs: ``torch.compile`` the detector (state-dict keys stay the same).
        seed / deterministic: seed everything when not None; with a seed, deterministic algorithms (warn-only).
        class_names: optional class names, saved with the checkpoint for tables and drawings.

    Training stops with a ``FloatingPointError`` naming the batch's image ids when the loss is NaN or inf:
    an optimizer step on it would ruin the weights (and the EMA) for the rest of the run, so going on or
    skipping the batch only hides the cause (bad boxes, too high a learning rate). The check costs one
    device sync per step.
    """

    def __init__(
        self,
        backbone: str | FeatureBackboneConfig | dict | None = None,
        num_classes: int | None = None,
        detection_arch: DetectionArch | None = None,
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
        fpn_channels: int | None = None,
        head_num_convs: int | None = None,
        focal_alpha: float | None = None,
        focal_gamma: float | None = None,
        cls_loss_weight: float | None = None,
        reg_loss_weight: float | None = None,
        centerness_loss_weight: float | None = None,
        score_thresh: float | None = None,
        nms_thresh: float | None = None,
        max_detections_per_image: int | None = None,
        freeze_backbone: bool = False,
        strides: tuple[int, ...] | None = None,
        regress_ranges: tuple[tuple[float, float], ...] | None = None,
        compile_model: bool = True,
        compile_kwargs: dict[str, Any] | None = None,
        seed: int | None = None,
        deterministic: bool = True,
        model: str | Detector | None = None,
        model_kwargs: dict[str, Any] | None = None,
        warmup_steps: int = 0,
        warmup_ratio: float = 0.001,
        ema_decay: float | None = None,
        ema_warmup_steps: float = 2000.0,
        class_names: list[str] | None = None,
        in_chans: int = 3,
        imgsz: int | None = None,
        pre_nms_topk: int | None = None,
        nms_method: NMSMethod | None = None,
        soft_nms_sigma: float | None = None,
    ) -> None:
        if seed is not None:
            L.seed_everything(seed, workers=True, verbose=False)
            if deterministic:
                torch.use_deterministic_algorithms(True, warn_only=True)
        elif deterministic:
            warnings.warn("ObjectDetector: deterministic=True has no effect without a seed", stacklevel=2)
        super().__init__()
        if detection_arch is not None and detection_arch not in get_args(DetectionArch):
            raise ValueError(
                f"detection_arch must be one of {get_args(DetectionArch)}, got {detection_arch!r}"
            )
        check_optimizer(optimizer)
        check_scheduler(scheduler)
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        if ema_decay is not None and not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1) or None, got {ema_decay}")

        self.save_hyperparameters(ignore=["cls_loss_fn", "reg_loss_fn", "model"])
        given = locals()
        options = {key: given[key] for key in MODEL_OPTIONS if given[key] is not None}
        self.model = build_model(
            model,
            backbone=backbone,
            detection_arch=detection_arch,
            options=options,
            strides=strides,
            model_kwargs=model_kwargs,
            num_classes=num_classes,
            in_chans=in_chans,
            imgsz=imgsz,
        )
        self.num_classes = int(getattr(self.model, "num_classes", num_classes or 0))
        if class_names is not None and len(class_names) != self.num_classes:
            raise ValueError(
                f"class_names has {len(class_names)} names but the model has {self.num_classes} classes"
            )
        # Plain types only, so checkpoints load with torch.load(weights_only=True).
        for key in ("backbone", "metrics", "logging_config", "transform_config"):
            self.hparams[key] = as_plain(self.hparams[key])
        for key, value in (("cls_loss_fn", cls_loss_fn), ("reg_loss_fn", reg_loss_fn)):
            self.hparams[key] = value if isinstance(value, str) or value is None else None
        self.hparams["model"] = model_spec(model, self.model)
        self.hparams["format_version"] = FORMAT_VERSION
        self.class_names = list(class_names) if class_names is not None else None
        if freeze_backbone:
            self.freeze_backbone()

        self.logging_config = _from_plain(LoggingConfig, logging_config) or LoggingConfig()
        from detforge.engine.metrics import build_metrics

        self.val_metrics = build_metrics(metrics, "val")
        self.test_metrics = build_metrics(metrics, "test")
        self.last_val_stats: dict[str, Any] | None = None
        self.transform_config = _from_plain(TransformConfig, transform_config)

        if compile_model:
            self.model.compile(**(compile_kwargs or {}))
        elif compile_kwargs is not None:
            warnings.warn("ObjectDetector: compile_kwargs is ignored when compile_model=False", stacklevel=2)

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, *args: Any, **kwargs: Any) -> ObjectDetector:
        """Lightning's ``load_from_checkpoint``; checkpoints written before ``format_version`` 2 have their
        hyper-parameters translated first (:func:`detforge.engine.config.upgrade_hparams`), and one that
        cannot be loaded raises a ValueError saying which version wrote it and what to do."""
        import io

        from lightning.fabric.utilities.cloud_io import _load as pl_load

        weights_only = kwargs.get("weights_only")
        checkpoint = pl_load(checkpoint_path, map_location="cpu", weights_only=weights_only)
        old = checkpoint.get("hyper_parameters", {}).get("format_version")
        checkpoint["hyper_parameters"] = upgrade_hparams(
            checkpoint.get("hyper_parameters", {}), checkpoint_path
        )
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        buffer.seek(0)
        try:
            return super().load_from_checkpoint(buffer, *args, **kwargs)
        except (TypeError, ValueError, KeyError, RuntimeError) as err:
            if old is not None:
                raise
            raise ValueError(
                f"{checkpoint_path}: written by detforge before checkpoint format {FORMAT_VERSION} (no "
                f"format_version in its hyper-parameters) and cannot be loaded ({type(err).__name__}: {err}); "
                "retrain with this version, or build ObjectDetector(model=...) and load_state_dict(strict=False)"
            ) from err

    # ------------------------------------------------------------------ the backbone
    @property
    def backbone(self) -> nn.Module:
        """The model's backbone (a ``backbone`` attribute, e.g. ``PyramidDetector.backbone``: the timm body)."""
        body = getattr(self.model, "backbone", None)
        if not isinstance(body, nn.Module):
            raise ValueError(f"model {type(self.model).__name__} has no backbone to freeze")
        return body

    def freeze_backbone(self) -> None:
        """Freeze the backbone: no gradients, BatchNorm becomes ``FrozenBatchNorm2d`` (statistics fixed in
        ``train()`` too). Takes effect in the next ``trainer.fit`` (the optimizer skips frozen weights)."""
        from detforge.models.backbone import freeze_backbone

        freeze_backbone(self.backbone)

    def unfreeze_backbone(self) -> None:
        """Undo :meth:`freeze_backbone`: gradients on, ``FrozenBatchNorm2d`` back to training ``BatchNorm2d``
        (timm's ``unfreeze``). The next ``trainer.fit`` optimizes the backbone again."""
        from timm.utils.model import unfreeze

        unfreeze(self.backbone)
        self.backbone.train(self.training)

    def set_lr(self, lr: float) -> None:
        """Set the learning rate of the next ``trainer.fit`` (as ``model.hparams.lr = lr``), e.g. between the
        two phases of a fine-tune: freeze, fit, unfreeze, ``set_lr(1e-4)``, fit again."""
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        self.hparams.lr = float(lr)

    # ------------------------------------------------------------------ steps
    def forward(self, images: Tensor) -> dict[str, Any]:
        """Raw head outputs for ``images`` (Tensor[B, C, H, W], float in [0, 1])."""
        return self.model(images)

    def _forward_loss(self, images: Tensor, targets: list[dict]) -> tuple[dict[str, Any], dict[str, Tensor]]:
        forward_loss = getattr(self.model, "forward_loss", None)
        if forward_loss is not None:
            return forward_loss(images, targets)
        outputs = self.model(images)  # a model that predates Detector: forward, then loss
        return outputs, self.model.loss(outputs, targets)

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
        _, losses = self._forward_loss(images, targets)  # normalised by positives averaged over DDP ranks
        loss = losses["loss"]
        if not bool(torch.isfinite(loss.detach()).all()):
            ids = [t.get("image_id") for t in targets]
            ids = [int(i) if isinstance(i, Tensor) and i.numel() == 1 else i for i in ids]
            parts = {k: float(v) for k, v in losses.items() if isinstance(v, Tensor) and v.numel() == 1}
            raise FloatingPointError(
                f"training loss is {float(loss)} at step {self.global_step} (batch {batch_idx}, image ids {ids}; "
                f"losses {parts}): check these images' boxes, or lower the learning rate"
            )
        self._log_losses("train", losses, images.shape[0])
        if self.logging_config.log_learning_rate:
            self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False)
        return loss

    def _eval_step(self, batch, stage: str, metrics: nn.ModuleDict) -> list[dict]:
        images, targets = batch
        outputs, losses = self._forward_loss(images, targets)
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
        from detforge.engine.metrics import compute_metrics, scalar_items

        stats = compute_metrics(metrics)
        for key, value in scalar_items(stats).items():
            self.log(f"{stage}/{key}", value.float(), prog_bar=key == "map", sync_dist=False)
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

    def _total_steps(self, interval: str = "step") -> int:
        """Scheduler steps of the whole run: optimizer steps, or epochs for an ``interval="epoch"`` scheduler."""
        if interval == "epoch":
            return max(int(self.trainer.max_epochs or 1), 1)
        return max(int(self.trainer.estimated_stepping_batches), 1)

    def configure_optimizers(self) -> Any:
        from detforge.engine.optim import configure_schedule, create_optimizer

        hp = self.hparams
        optimizer = create_optimizer(self.model, hp.optimizer, hp.lr, hp.weight_decay, hp.optimizer_kwargs)
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
        cfg = self.logging_config
        if cfg.log_gradient_norm:
            grads = [p.grad for p in self.parameters() if p.grad is not None]
            norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=self.device)
            self.log("train/grad_norm", norm, on_step=True, on_epoch=False)
        if cfg.log_weight_norm:
            norm = torch.nn.utils.get_total_norm([p.detach() for p in self.parameters()])
            self.log("train/weight_norm", norm, on_step=True, on_epoch=False)

    # ------------------------------------------------------------------ inference helpers
    def get_data_config(self) -> dict[str, Any]:
        """``mean``, ``std``, ``input_size`` (C, H, W) and ``interpolation``; needs a ``transform_config``."""
        if self.transform_config is None:
            raise RuntimeError(
                "get_data_config() needs ObjectDetector(transform_config=TransformConfig(...))"
            )
        from detforge.engine.config import resolve_data_config

        backbone = self.hparams.backbone
        name = backbone.get("model_name") if isinstance(backbone, dict) else backbone
        return resolve_data_config(self.transform_config, self.hparams.in_chans, name)

    def preprocess(self, images: Any) -> Tensor:
        """PIL images / uint8 or float tensors (C, H, W) as the network input: Tensor[B, C, S, S], letterboxed
        by the validation transforms (:func:`detforge.engine.config.preprocess_images`): aspect ratio kept,
        grey padding bottom/right, so boxes map back with ``scale_boxes``."""
        from detforge.engine.config import preprocess_images

        return preprocess_images(images, self.get_data_config(), self.transform_config.normalize)[0]

    def to_onnx(
        self,
        save_path: str | os.PathLike | None = None,
        example_input: Tensor | None = None,
        opset_version: int = 17,
        dynamic_axes: dict[str, dict[int, str]] | None = None,
        with_nms: bool = False,
        **kwargs: Any,
    ) -> str:
        """Export the detector to ONNX: raw head tensors, or with ``with_nms`` final ``boxes`` / ``scores`` /
        ``labels`` with decoding and NMS inside the graph. Returns the path written: ``save_path``, or a new
        temporary ``.onnx`` file when None (the caller removes it)."""
        import tempfile

        from detforge.export import export_onnx

        if save_path is None:
            fd, save_path = tempfile.mkstemp(prefix="detforge_", suffix=".onnx")
            os.close(fd)
        was_training = self.training
        self.eval()
        try:
            return str(
                export_onnx(
                    self.model,
                    save_path,
                    example_input=example_input,
                    opset_version=opset_version,
                    dynamic_axes=dynamic_axes,
                    with_nms=with_nms,
                    **kwargs,
                )
            )
        finally:
            self.train(was_training)


def _from_plain(cls: type, value: Any) -> Any:
    return cls(**value) if isinstance(value, dict) else value


_POSTPROCESS_KEYS = (
    "score_thresh",
    "nms_thresh",
    "pre_nms_topk",
    "max_detections_per_image",
    "nms_method",
    "soft_nms_sigma",
)


def build_model(
    model: str | nn.Module | dict | None,
    backbone: str | FeatureBackboneConfig | dict | None = None,
    detection_arch: str | None = None,
    options: dict[str, Any] | None = None,
    strides: tuple[int, ...] | None = None,
    model_kwargs: dict[str, Any] | None = None,
    num_classes: int | None = None,
    in_chans: int = 3,
    imgsz: int | None = None,
) -> nn.Module:
    """The detector ``ObjectDetector`` wraps (its arguments of the same names; ``options``: the model options
    that are set). A registered name, or the autotimm form (``backbone`` + ``detection_arch``: the registered
    ``<arch>_<timm name>``), is built by :func:`detforge.models.registry.create_model` with ``num_classes``,
    ``in_chans``, ``options`` and ``model_kwargs``; a built module (or its ``class_path`` / ``init_args`` dict
    from a checkpoint) is taken as it is and must agree with ``num_classes`` and ``in_chans``."""
    options, model_kwargs = dict(options or {}), dict(model_kwargs or {})
    if isinstance(model, dict):
        model = _instantiate(model)
    if isinstance(model, nn.Module):
        given = sorted(
            [*options, *model_kwargs]
            + [
                k
                for k, v in (
                    ("backbone", backbone),
                    ("detection_arch", detection_arch),
                    ("strides", strides),
                )
                if v is not None
            ]
        )
        if given:
            raise ValueError(
                f"model is a built {type(model).__name__}: give {given} to its constructor, not to ObjectDetector"
            )
        name = type(model).__name__
    elif model is None:
        if backbone is None:
            raise ValueError(
                "ObjectDetector needs a model (a registered name or a Detector) or a backbone (timm name)"
            )
        cfg = FeatureBackboneConfig(**backbone) if isinstance(backbone, dict) else backbone
        cfg = FeatureBackboneConfig(cfg) if isinstance(cfg, str) else cfg
        name = f"{detection_arch or 'fcos'}_{cfg.model_name}"
        kwargs = _backbone_kwargs(cfg, name)
        if imgsz is not None:
            kwargs["input_size"] = (imgsz, imgsz)
        if strides is not None and len(strides) >= 3:  # a first guess, checked against the built pyramid
            kwargs["extra_levels"] = len(strides) - 3
        model_kwargs = {**kwargs, **model_kwargs}
    else:
        ignored = [
            k for k, v in (("backbone", backbone), ("detection_arch", detection_arch)) if v is not None
        ]
        if ignored:
            raise ValueError(
                f"{ignored} are for the autotimm form (model=None); model {model!r} is already named"
            )
        name = model
    if not isinstance(model, nn.Module):
        kwargs = {"in_chans": in_chans, **({} if num_classes is None else {"num_classes": num_classes})}
        model = _create(name, {**kwargs, **options, **model_kwargs}, set(options))
        if strides is not None and tuple(getattr(model, "strides", ())) != tuple(strides):
            model = _rebuild_for_strides(model, name, tuple(strides), {**kwargs, **options, **model_kwargs})
    elif strides is not None and tuple(getattr(model, "strides", ())) != tuple(strides):
        raise ValueError(
            f"strides={tuple(strides)} but model {name!r} has strides {getattr(model, 'strides', None)}"
        )
    if num_classes is not None and getattr(model, "num_classes", num_classes) != num_classes:
        raise ValueError(f"model {name!r} has {model.num_classes} classes but num_classes={num_classes}")
    chans = getattr(model, "in_chans", in_chans)
    if chans != in_chans:
        raise ValueError(
            f"model {name!r} takes {chans}-channel images but the data has {in_chans} channels "
            f"(for 1-channel models use thermal / grayscale data, e.g. --data synthetic-thermal)"
        )
    return model


def _backbone_kwargs(cfg: FeatureBackboneConfig, name: str) -> dict[str, Any]:
    """The builder arguments of a ``FeatureBackboneConfig``: ``pretrained`` and ``out_indices``; the fields
    the ``fcos_`` / ``yolox_`` builders do not take (dropout rates, timm keyword arguments) raise."""
    default = FeatureBackboneConfig(cfg.model_name)
    kwargs: dict[str, Any] = {}
    if cfg.pretrained != default.pretrained:
        kwargs["pretrained"] = cfg.pretrained
    if cfg.out_indices is not None:
        kwargs["out_indices"] = tuple(cfg.out_indices)
    rest = [
        k for k in ("drop_rate", "drop_path_rate", "extra_kwargs") if getattr(cfg, k) != getattr(default, k)
    ]
    if rest:
        raise ValueError(
            f"model {name!r}: its builder takes the backbone's name, pretrained and out_indices, not {rest}"
        )
    return kwargs


def _create(name: str, kwargs: dict[str, Any], options: set[str]) -> nn.Module:
    """``create_model(name, **kwargs)``; a keyword the builder does not take raises a ValueError naming it,
    except a post-processing setting, which is set on the built ``Detector`` instead."""
    import re

    from detforge.models.registry import create_model

    kwargs, deferred = dict(kwargs), {}
    while True:
        try:
            model = create_model(name, **kwargs)
            break
        except TypeError as err:
            match = re.search(r"unexpected keyword argument '(\w+)'", str(err))
            key = match.group(1) if match else None
            if key not in kwargs:
                raise
            if key in _POSTPROCESS_KEYS:
                deferred[key] = kwargs.pop(key)
                continue
            where = "ObjectDetector option" if key in options else "model_kwargs entry"
            raise ValueError(f"model {name!r} does not take {key}={kwargs[key]!r} (an {where})") from err
    if deferred:
        if not isinstance(model, Detector):
            raise ValueError(f"model {name!r} does not take the post-processing settings {sorted(deferred)}")
        model.set_postprocess(**deferred)
    return model


def _rebuild_for_strides(model: nn.Module, name: str, strides: tuple[int, ...], kwargs: dict) -> nn.Module:
    """``model`` rebuilt with the ``extra_levels`` that give ``strides`` (its pyramid's levels above the
    backbone's), or a ValueError when no count of extra levels gives them."""
    built = tuple(getattr(model, "strides", ()))
    extra = getattr(model, "init_args", {}).get("extra_levels")
    wanted = None if extra is None else len(strides) - (len(built) - extra)
    if wanted is not None and wanted >= 0 and wanted != extra:
        model = _create(name, {**kwargs, "extra_levels": wanted}, set())
        built = tuple(model.strides)
    if built != strides:
        raise ValueError(
            f"strides={strides} do not match model {name!r}: its pyramid has strides {built or None}"
        )
    return model


def _instantiate(spec: dict[str, Any]) -> nn.Module:
    """A ``Detector`` from ``{"class_path": ..., "init_args": {...}}`` (as checkpoints hold a built model),
    through jsonargparse so dataclass arguments come back typed. The class must already be imported or
    come from detforge: a checkpoint cannot import other code."""
    import sys

    from jsonargparse import ArgumentParser

    module = str(spec.get("class_path", "")).rpartition(".")[0]
    if module not in sys.modules and not module.startswith("detforge."):
        raise ValueError(
            f"model class {spec.get('class_path')!r}: import its module before loading the checkpoint"
        )
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--model", type=Detector)
    return parser.instantiate_classes(parser.parse_object({"model": spec})).model
