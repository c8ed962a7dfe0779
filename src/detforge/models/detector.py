"""``ObjectDetector``: the Lightning module that trains, validates and exports any detforge detector.

The model is a registered name (``model="detforge_n"``), a built :class:`~detforge.models.base.Detector`, or
the autotimm form ``ObjectDetector(backbone="resnet50", detection_arch="fcos", ...)``; options left at None
keep the model's defaults (:func:`detforge.models.build.build_model` builds it).
The module itself only trains: optimizer and scheduler (:mod:`detforge.engine.optim`), warmup, EMA, metrics
(:mod:`detforge.engine.metrics`) and logging; freezing and the backbone's learning rate are
:class:`~detforge.models.detector_backbone.BackboneTuning`, preprocessing and ONNX
:class:`~detforge.models.detector_deploy.DeployHelpers`. Training and validation call the model's
``forward_loss(images, targets)``, so one forward serves the loss and the detections.

Logged names (as autotimm): ``train/loss``, ``train/cls_loss``, ``train/reg_loss``, ``train/centerness_loss``,
``train/num_pos``, ``val/loss``, ..., ``val/map``, ``val/map_50``, ...; ``train/lr``, ``train/grad_norm`` and
``train/weight_norm`` when a ``LoggingConfig`` asks for them.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor, nn

from detforge.engine.config import (
    FORMAT_VERSION,
    LoggingConfig,
    MetricConfig,
    TransformConfig,
    from_plain,
    legacy_checkpoint_error,
    load_checkpoint,
    nonfinite_loss_error,
    plain_hparams,
    scalar_losses,
)
from detforge.engine.cpu_precision import cpu_autocast
from detforge.engine.optim import OptimizerName, SchedulerName, check_optimizer, check_scheduler
from detforge.models.backbone import FeatureBackboneConfig
from detforge.models.base import Detector, NMSMethod, forward_with_sizes
from detforge.models.build import MODEL_OPTIONS, DetectionArch, build_model, check_detection_arch
from detforge.models.detector_backbone import BackboneTuning
from detforge.models.detector_deploy import DeployHelpers
from detforge.models.detector_optim import OptimisationHooks
from detforge.targets import metric_targets, to_original_size

__all__ = ["BEST_CONF_KEY", "FORMAT_VERSION", "MODEL_OPTIONS", "ObjectDetector", "build_model"]

BEST_CONF_KEY = "detforge_best_conf"
"""Checkpoint key of ``ObjectDetector.best_conf``: the confidence that maximised the overall F1 on the
validation before the save (float, or None without one); ``predict``'s default ``--conf``."""


class ObjectDetector(BackboneTuning, DeployHelpers, OptimisationHooks, L.LightningModule):
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
        max_detections_per_image, nms_method, soft_nms_sigma, anchors: model options; None keeps the model's default,
            a value is handed to the builder (a ValueError when it does not take it); see
            :func:`detforge.models.build.build_model`.
            ``anchors="auto"`` (YOLOv3): before training starts the model fits its anchors to the training
            data's boxes at the training size (:meth:`on_fit_start`), and checkpoints keep them.
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
        freeze_backbone_bn: turn the backbone's BatchNorm layers into ``FrozenBatchNorm2d`` (statistics and
            affine fixed at their pretrained values; the rest of the backbone trains), as torchvision's
            detection models do with pretrained backbones: small batches give poor BatchNorm statistics.
        freeze_backbone_stride: freeze the backbone's stem and the stages up to this output stride
            (:func:`~detforge.models.backbone.freeze_stages`; 4 = detectron2's ``FREEZE_AT=2``): their
            ImageNet features stay, and backward stops before the costliest layers. None: train them all.
        backbone_lr_mult: the backbone body's learning rate is ``lr * backbone_lr_mult`` (the neck and head
            train at ``lr``); for fine-tuning a pretrained backbone. Needs a model with a ``backbone``. None:
            the model's own multipliers (DETR's 0.1 on its backbone; 1 for the others).
        compile_model / compile_kwargs: ``torch.compile`` the detector (state-dict keys stay the same).
        seed / deterministic: seed everything when not None; with a seed, deterministic algorithms (warn-only).
        class_names: optional class names, saved with the checkpoint for tables and drawings; None with
            ``weights`` of the same classes: the weights' names (COCO's).
        weights: start from the registered model's named weights (``"coco"``) or a weight file in their
            layout (:func:`detforge.models.registry.create_model`); with a ``num_classes`` other than the
            weights' the class layers start anew (fine-tuning). A checkpoint loaded later holds the weights
            itself: :meth:`load_from_checkpoint` does not fetch them again.
        keep_classes: with ``weights`` and other classes: the class-layer rows of the classes whose names
            (``class_names``) are among the weights' start from the weights' rows instead of anew.

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
        anchors: list[list[float]] | Literal["auto"] | None = None,
        freeze_backbone_bn: bool = False,
        backbone_lr_mult: float | None = None,
        freeze_backbone_stride: int | None = None,
        weights: str | None = None,
        keep_classes: bool = False,
    ) -> None:
        if seed is not None:
            L.seed_everything(seed, workers=True, verbose=False)
            if deterministic:
                torch.use_deterministic_algorithms(True, warn_only=True)
        elif deterministic:
            warnings.warn("ObjectDetector: deterministic=True has no effect without a seed", stacklevel=2)
        super().__init__()
        check_detection_arch(detection_arch)
        check_optimizer(optimizer)
        check_scheduler(scheduler)
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        if freeze_backbone_stride is not None and freeze_backbone_stride < 1:
            raise ValueError(f"freeze_backbone_stride must be >= 1 or None, got {freeze_backbone_stride}")
        if backbone_lr_mult is not None and backbone_lr_mult < 0:
            raise ValueError(f"backbone_lr_mult must be >= 0, got {backbone_lr_mult}")
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
            weights=weights,
            keep_classes=list(class_names) if keep_classes and class_names is not None else None,
        )
        if keep_classes and (weights is None or class_names is None):
            raise ValueError("keep_classes needs weights and class_names (the data's class names)")
        if class_names is None and getattr(self.model, "class_names", None) is not None:
            class_names = list(self.model.class_names)
            self.hparams.class_names = class_names
        self.num_classes = int(getattr(self.model, "num_classes", num_classes or 0))
        if class_names is not None and len(class_names) != self.num_classes:
            raise ValueError(
                f"class_names has {len(class_names)} names but the model has {self.num_classes} classes"
            )
        plain_hparams(self.hparams, model, self.model, cls_loss_fn=cls_loss_fn, reg_loss_fn=reg_loss_fn)
        self.class_names = list(class_names) if class_names is not None else None
        self.apply_backbone_options(
            freeze_backbone, freeze_backbone_stride, freeze_backbone_bn, backbone_lr_mult
        )

        self.logging_config = from_plain(LoggingConfig, logging_config) or LoggingConfig()
        self.cpu_autocast = (
            False  # bfloat16 autocast of the training step on the CPU (CpuPrecisionChoice sets it)
        )
        from detforge.engine.metrics import build_metrics

        self.val_metrics = build_metrics(metrics, "val")
        self.test_metrics = build_metrics(metrics, "test")
        self.last_val_stats: dict[str, Any] | None = None
        self.best_conf: float | None = None  # the last validation's F1-best confidence, saved in checkpoints
        self.transform_config = from_plain(TransformConfig, transform_config)

        if compile_model:
            self.model.compile(**(compile_kwargs or {}))
        elif compile_kwargs is not None:
            warnings.warn("ObjectDetector: compile_kwargs is ignored when compile_model=False", stacklevel=2)

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, *args: Any, **kwargs: Any) -> ObjectDetector:
        """Lightning's ``load_from_checkpoint``; checkpoints written before ``format_version`` 2 have their
        hyper-parameters translated first (:func:`detforge.engine.config.upgrade_hparams`), and one that
        cannot be loaded raises a ValueError saying which version wrote it and what to do."""
        buffer, version = load_checkpoint(checkpoint_path, kwargs.get("weights_only"))
        kwargs.setdefault("weights", None)  # the checkpoint holds the weights: never fetch them again
        kwargs.setdefault("keep_classes", False)
        try:
            return super().load_from_checkpoint(buffer, *args, **kwargs)
        except (TypeError, ValueError, KeyError, RuntimeError) as err:
            if version is not None:
                raise
            raise legacy_checkpoint_error(checkpoint_path, err) from err

    def set_lr(self, lr: float) -> None:
        """Set the learning rate of the next ``trainer.fit`` (as ``model.hparams.lr = lr``), e.g. between the
        two phases of a fine-tune: freeze, fit, unfreeze, ``set_lr(1e-4)``, fit again."""
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        self.hparams.lr = float(lr)

    def on_fit_start(self) -> None:
        """Let a model that asks for it (``needs_data_fit``, e.g. YOLOv3 with ``anchors="auto"``) fit its
        data-dependent settings to the training boxes, once: a resumed run or a loaded checkpoint has them."""
        if getattr(self.model, "needs_data_fit", False):
            from detforge.engine.data_fit import fit_model_to_data

            fit_model_to_data(self.model, self.trainer, self, self.hparams.imgsz)

    # ------------------------------------------------------------------ steps
    def forward(self, images: Tensor) -> dict[str, Any]:
        """Raw head outputs for ``images`` (Tensor[B, C, H, W], float in [0, 1])."""
        return self.model(images)

    def _forward_loss(
        self, images: Tensor, targets: list[dict], detections: bool = True
    ) -> tuple[dict[str, Any], dict[str, Tensor]]:
        forward_loss = getattr(self.model, "forward_loss", None)
        if forward_loss is not None and not detections and _takes_detections(forward_loss):
            return forward_loss(images, targets, detections=False)  # the training step keeps only the losses
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
        step = stage == "train"
        options = dict(on_step=step, on_epoch=not step, batch_size=batch_size, sync_dist=not step)
        for key, value in scalar_losses(losses).items():
            self.log(f"{stage}/{key}", value.detach().float(), prog_bar=key == "loss", **options)

    def training_step(self, batch: tuple[Tensor, list[dict]], batch_idx: int) -> Tensor:
        images, targets = batch
        # the losses only (normalised by positives averaged over DDP ranks); bfloat16 autocast where
        # CpuPrecisionChoice measured it faster on this CPU
        with cpu_autocast(self.cpu_autocast and images.device.type == "cpu"):
            _, losses = self._forward_loss(images, targets, detections=False)
        loss = losses["loss"]
        if not bool(torch.isfinite(loss.detach()).all()):
            raise nonfinite_loss_error(losses, targets, self.global_step, batch_idx)
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
            from detforge.metrics.metric import DetectionMAP

            for metric in self.val_metrics.values():  # F1 curve, confusion matrix: DetectionMAP.summary
                if isinstance(metric, DetectionMAP) and metric.last_inputs is not None:
                    stats["detection_summary"] = summary = metric.summary(self.num_classes or None)
                    self.best_conf = summary.f1.best_conf
                    break
            self.last_val_stats = stats

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[BEST_CONF_KEY] = self.best_conf

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.best_conf = checkpoint.get(BEST_CONF_KEY)  # None in checkpoints written before it was kept

    def on_test_epoch_end(self) -> None:
        self.last_test_stats = self._log_metrics("test", self.test_metrics)

    @torch.no_grad()
    def predict(self, images: Tensor, image_sizes: list[tuple[int, int]] | None = None) -> list[dict]:
        """Detections for ``images`` (Tensor[B, C, H, W] in [0, 1]) in their pixels: list of dict(boxes
        Tensor[K, 4] xyxy, scores Tensor[K], labels Tensor[K] int64). ``image_sizes``: unpadded (h, w) each."""
        sizes = image_sizes or self._image_sizes(images, None)
        return self.model.postprocess(forward_with_sizes(self.model, images, image_sizes), sizes)

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> list[dict]:
        if isinstance(batch, Tensor):
            return self.predict(batch)
        images, targets = batch
        return to_original_size(self.predict(images, self._image_sizes(images, targets)), targets)


def _takes_detections(forward_loss: Any) -> bool:
    """Whether a model's ``forward_loss`` takes the ``detections`` keyword (every Detector does; a user's
    override written before it may not). Read once per function, not every training step."""
    return _signature_has_detections(getattr(forward_loss, "__func__", forward_loss))


@functools.lru_cache(maxsize=64)
def _signature_has_detections(function: Any) -> bool:
    import inspect

    try:
        return "detections" in inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
