"""The detector protocol in code: :class:`Detector`, the base class of every detforge model.

Every model has the same steps, independent of train / eval mode:

- ``forward(images Tensor[B, C, H, W] in [0, 1]) -> outputs`` (a dict of raw head tensors);
- ``loss(outputs, targets) -> dict[str, Tensor]`` with ``loss`` the total;
- ``forward_loss(images, targets, *, detections=True) -> (outputs, losses)``: what training and validation
  call, so validation gets the loss and the detections from one forward. The default is ``forward`` then
  ``loss``; a model whose forward needs the targets (RoI sampling, denoising queries) overrides it. The
  training step passes ``detections=False``: a model may skip what only detections need, same losses;
- ``postprocess(outputs, image_sizes) -> list[dict(boxes, scores, labels)]`` in input-image pixels, with the
  one set of post-processing settings every model shares (:attr:`Detector.postprocess_settings`).

A dense model (one score vector and one box per location) only defines ``decode(outputs) -> (scores
Tensor[B, P, C], boxes Tensor[B, P, 4])``; the base's ``postprocess`` and ONNX detections then come for free.

Export hooks say what an ONNX graph computes, so no exporter or evaluator switches on the model's type:
:meth:`Detector.export_inputs`, :meth:`Detector.export_raw`, :meth:`Detector.export_detections` and
:meth:`Detector.outputs_from_export` (raw ONNX outputs back to ``outputs`` for ``postprocess``).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Literal, TypedDict, Unpack, get_args

import torch
from torch import Tensor, nn

from detforge.models.preprocess import Preprocess

__all__ = [
    "ChannelsLast",
    "Detector",
    "NMSMethod",
    "PostprocessOptions",
    "PostprocessSettings",
    "check_images",
    "check_nms_method",
    "forward_with_sizes",
]

NMSMethod = Literal["hard", "gaussian", "linear", "none"]
"""Suppression: hard NMS, soft-NMS with linear or gaussian decay, or none (set prediction, heatmap peaks)."""


def check_nms_method(method: str) -> None:
    """ValueError listing the allowed values unless ``method`` is an :data:`NMSMethod`."""
    if method not in get_args(NMSMethod):
        raise ValueError(f"nms_method must be one of {get_args(NMSMethod)}, got {method!r}")


class PostprocessOptions(TypedDict, total=False):
    """The post-processing keywords every detector constructor takes, as ``**postprocess:
    Unpack[PostprocessOptions]`` (typed for jsonargparse and type checkers; each model's defaults are its
    :attr:`Detector.postprocess_defaults`). Meanings: :class:`PostprocessSettings`."""

    score_thresh: float
    nms_thresh: float
    pre_nms_topk: int
    max_detections_per_image: int
    nms_method: NMSMethod
    soft_nms_sigma: float


POSTPROCESS_KEYS = tuple(PostprocessOptions.__annotations__)


@dataclass(frozen=True, kw_only=True)
class PostprocessSettings:
    """The post-processing settings every detector shares (keyword-only; the edge models' configs extend it).

    Attributes:
        score_thresh: drop detections scoring at or below this.
        nms_thresh: IoU above which NMS suppresses (soft-NMS linear: decays) a lower-scoring box.
        pre_nms_topk: candidates kept per image and feature level before NMS.
        max_detections_per_image: detections kept per image after NMS.
        nms_method: "hard", "gaussian" / "linear" (soft-NMS) or "none".
        soft_nms_sigma: the gaussian soft-NMS decay ``exp(-iou^2 / sigma)``.
    """

    score_thresh: float = 0.05
    nms_thresh: float = 0.6
    pre_nms_topk: int = 1000
    max_detections_per_image: int = 100
    nms_method: NMSMethod = "hard"
    soft_nms_sigma: float = 0.5

    def __post_init__(self) -> None:
        check_nms_method(self.nms_method)
        if not 0.0 <= self.score_thresh < 1.0:
            raise ValueError(f"score_thresh must be in [0, 1), got {self.score_thresh}")
        if not 0.0 < self.nms_thresh <= 1.0:
            raise ValueError(f"nms_thresh must be in (0, 1], got {self.nms_thresh}")
        if self.pre_nms_topk < 1 or self.max_detections_per_image < 1:
            raise ValueError(
                f"pre_nms_topk and max_detections_per_image must be >= 1, got {self.pre_nms_topk} and "
                f"{self.max_detections_per_image}"
            )
        if self.soft_nms_sigma <= 0:
            raise ValueError(f"soft_nms_sigma must be > 0, got {self.soft_nms_sigma}")


def _record_init_args(init):
    """Wrap a subclass ``__init__`` so the outermost call records its bound arguments in ``init_args``."""

    signature = inspect.signature(init)

    @functools.wraps(init)
    def wrapped(self, *args, **kwargs):
        if "init_args" not in self.__dict__:
            bound = signature.bind(self, *args, **kwargs)
            bound.apply_defaults()
            recorded: dict[str, Any] = {}
            for name, value in list(bound.arguments.items())[1:]:
                if signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
                    recorded.update(value)
                elif signature.parameters[name].kind is not inspect.Parameter.VAR_POSITIONAL:
                    recorded[name] = value
            object.__setattr__(self, "init_args", recorded)
        init(self, *args, **kwargs)

    return wrapped


def _checks_targets(method, with_images: bool):
    """Wrap a subclass ``loss`` (``with_images=False``) or ``forward_loss`` so the outermost call checks the
    targets' boxes first (:func:`detforge.targets.check_target_boxes`: inverted boxes raise, normalized-looking
    ones warn); nested calls (``forward_loss`` -> ``loss``, ``super().loss``) skip the check."""

    @functools.wraps(method)
    def wrapped(self, first, targets, *args, **kwargs):
        if self.__dict__.get("_checking_targets"):
            return method(self, first, targets, *args, **kwargs)
        from detforge.targets import check_target_boxes

        if with_images:
            check_images(first)
        image_size = tuple(first.shape[-2:]) if with_images else None
        check_target_boxes(targets, image_size)
        self.__dict__["_checking_targets"] = True
        try:
            return method(self, first, targets, *args, **kwargs)
        finally:
            self.__dict__["_checking_targets"] = False

    return wrapped


def _checks_images(forward):
    """Wrap a subclass ``forward`` so a list / tuple of images gets a clear TypeError (:func:`check_images`)."""

    @functools.wraps(forward)
    def wrapped(self, images, *args, **kwargs):
        if not isinstance(images, Tensor):
            check_images(images)
        return forward(self, images, *args, **kwargs)

    return wrapped


def check_images(images: Any, batched: bool = True) -> None:
    """TypeError unless ``images`` is a batch tensor Tensor[B, C, H, W] (any Tensor when ``batched`` is False),
    e.g. for a torchvision-tutorial batch: a tuple of per-image tensors from ``tuple(zip(*batch))``."""
    if isinstance(images, Tensor) and (images.ndim == 4 or not batched):
        return
    if isinstance(images, Tensor):
        got = f"a Tensor of shape {tuple(images.shape)}"
    elif isinstance(images, (list, tuple)):
        inner = sorted({type(x).__name__ for x in images})
        got = f"a {type(images).__name__} of {len(images)} {'/'.join(inner) or 'items'}"
    else:
        got = f"a {type(images).__name__}"
    raise TypeError(
        f"images must be one batch Tensor[B, C, H, W] (float in [0, 1]) with targets a list of dicts, got {got}; "
        "collate a dataset with detforge.data.detection_collate (as DetectionDataModule's loaders do), or "
        "torch.stack(list(images)) when the images share a size"
    )


def forward_with_sizes(
    model: nn.Module, images: Tensor, image_sizes: Sequence[tuple[int, int]] | Tensor | None
) -> dict[str, Any]:
    """``model(images)``, passing each image's real (unpadded) (h, w) when given and the model's ``forward``
    takes ``image_sizes`` (DETR masks the padding, Faster R-CNN clips proposals to it), as ``forward_loss``
    does with the targets' sizes; other models get the images alone."""
    forward = getattr(model, "_orig_mod", model).forward
    if image_sizes is not None and "image_sizes" in inspect.signature(forward).parameters:
        return model(images, image_sizes=image_sizes)
    return model(images)


def _setting(name: str) -> property:
    """A post-processing setting as an attribute: ``model.nms_thresh`` reads it, ``model.nms_thresh = 0.5``
    sets it (validated)."""
    return property(
        lambda self: getattr(self.postprocess_settings, name),
        lambda self, value: self.set_postprocess(**{name: value}),
        doc=f"Post-processing setting ``{name}`` (see :class:`PostprocessSettings`).",
    )


class ChannelsLast:
    """Mixin of the detectors whose ``forward`` honours a ``channels_last`` flag (a bool set in ``__init__``):
    the Trainer's :class:`~detforge.engine.memory_format.MemoryFormatChoice` times such a model in both formats
    and switches it (:func:`~detforge.engine.memory_format.set_channels_last`)."""

    channels_last: bool

    def apply_memory_format(self) -> None:
        """Put the weights in channels-last memory format when ``channels_last`` is set (call once the layers
        exist)."""
        if self.channels_last:
            self.to(memory_format=torch.channels_last)  # type: ignore[attr-defined]

    def in_memory_format(self, images: Tensor) -> Tensor:
        """``images`` (Tensor[B, C, H, W]) in the model's memory format: channels-last when ``channels_last``."""
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images


class Detector(nn.Module):
    """Base class of every detector (the model protocol; see the module docstring).

    Args:
        num_classes: object classes (no background class).
        in_chans: image channels (3 RGB, 1 thermal / grayscale).
        input_size: (h, w) the model is meant to run at (``default_input_size``).
        **postprocess: the post-processing settings (:class:`PostprocessOptions`: ``score_thresh``,
            ``nms_thresh``, ``pre_nms_topk``, ``max_detections_per_image``, ``nms_method``,
            ``soft_nms_sigma``); unset ones take the class's :attr:`postprocess_defaults`, then
            :class:`PostprocessSettings`' defaults.

    Attributes:
        postprocess_defaults: a subclass's own post-processing defaults (e.g. ``{"score_thresh": 0.3}``).
        keeps_aspect_ratio: True for models trained on images that keep their aspect ratio at varying sizes
            (two-stage, DETR-style); multi-scale training then draws a shortest edge per image instead of
            one square size per batch (:mod:`detforge.data.multi_scale`). False by default.
        init_args: the arguments of the outermost ``__init__`` call (a subclass's) with every post-processing
            setting in effect, recorded automatically;
            tests and the Lightning module use it to check that every option reached the model.
    """

    init_args: dict[str, Any]
    postprocess_defaults: ClassVar[dict[str, Any]] = {}
    keeps_aspect_ratio: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = _record_init_args(cls.__dict__["__init__"])
        if "loss" in cls.__dict__:
            cls.loss = _checks_targets(cls.__dict__["loss"], with_images=False)
        if "forward" in cls.__dict__:
            cls.forward = _checks_images(cls.__dict__["forward"])
        if "forward_loss" in cls.__dict__:
            cls.forward_loss = _checks_targets(cls.__dict__["forward_loss"], with_images=True)

    def __init__(
        self,
        num_classes: int,
        in_chans: int = 3,
        input_size: tuple[int, int] = (320, 320),
        **postprocess: Unpack[PostprocessOptions],
    ) -> None:
        super().__init__()
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if int(in_chans) < 1:
            raise ValueError(f"in_chans must be >= 1, got {in_chans}")
        self.num_classes = int(num_classes)
        self.in_chans = int(in_chans)
        self.default_input_size: tuple[int, int] = (int(input_size[0]), int(input_size[1]))
        unknown = sorted(set(postprocess) - set(POSTPROCESS_KEYS))
        if unknown:  # what Python says of an unknown keyword, so builders report it the same way
            raise TypeError(f"{type(self).__name__}.__init__() got an unexpected keyword argument {unknown[0]!r}")
        self.postprocess_settings = PostprocessSettings(**{**self.postprocess_defaults, **postprocess})
        if "init_args" in self.__dict__:  # record the settings in effect, set or defaulted
            self.init_args.update(asdict(self.postprocess_settings))
        self._export_meta: dict[tuple[int, int], dict[str, Any]] = {}

    # ------------------------------------------------------------------ post-processing settings
    def set_postprocess(self, **changes: Any) -> None:
        """Change post-processing settings by name (validated), e.g. ``model.set_postprocess(nms_thresh=0.5)``."""
        unknown = sorted(set(changes) - set(POSTPROCESS_KEYS))
        if unknown:
            raise ValueError(
                f"unknown post-processing settings {unknown}; the settings are {POSTPROCESS_KEYS}"
            )
        self.postprocess_settings = PostprocessSettings(**{**asdict(self.postprocess_settings), **changes})

    score_thresh = _setting("score_thresh")
    nms_thresh = _setting("nms_thresh")
    pre_nms_topk = _setting("pre_nms_topk")
    max_detections_per_image = _setting("max_detections_per_image")
    nms_method = _setting("nms_method")
    soft_nms_sigma = _setting("soft_nms_sigma")

    # ------------------------------------------------------------------ settings fitted to the data
    @property
    def needs_data_fit(self) -> bool:
        """Whether :meth:`fit_to_data` should run once before training (e.g. YOLOv3 with ``anchors="auto"``);
        False by default, so the Lightning module reads no boxes for other models."""
        return False

    def fit_to_data(self, boxes_wh: Tensor) -> dict[str, Any]:
        """Fit data-dependent settings (kept in buffers, so checkpoints hold them) to the training boxes'
        sizes (Tensor[N, 2] pixels at the training input size); called once before training when
        :attr:`needs_data_fit`. Returns what was fitted, for the log; a no-op by default."""
        return {}

    # ------------------------------------------------------------------ the protocol
    def forward(self, images: Tensor) -> dict[str, Any]:
        """Raw head outputs for ``images`` (Tensor[B, in_chans, H, W], float in [0, 1])."""
        raise NotImplementedError(f"{type(self).__name__} must define forward(images)")

    def loss(self, outputs: dict[str, Any], targets: list[dict]) -> dict[str, Tensor]:
        """Losses of a batch: ``loss`` (the total) and detached parts (``cls_loss``, ``reg_loss``, ...,
        ``num_pos``). ``targets``: per image ``boxes`` (Tensor[N, 4] xyxy pixels) and ``labels``
        (Tensor[N] int64)."""
        raise NotImplementedError(f"{type(self).__name__} must define loss(outputs, targets)")

    def forward_loss(
        self, images: Tensor, targets: list[dict], *, detections: bool = True
    ) -> tuple[dict[str, Any], dict[str, Tensor]]:
        """``(outputs, losses)`` of one forward: training and validation call this. ``detections=False``
        (the training step, which keeps only the losses) lets a model skip work that only ``postprocess``
        needs (Faster R-CNN's RoI head on its test proposals); the losses must not change, the outputs may
        then be partial. Dense models need every output for the loss and skip nothing."""
        outputs = self(images)
        return outputs, self.loss(outputs, targets)

    def decode(self, outputs: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """Dense models: per-location class scores (Tensor[B, P, C]) and xyxy boxes (Tensor[B, P, 4])."""
        raise NotImplementedError(
            f"{type(self).__name__} defines neither decode(outputs) nor its own postprocess / export_detections"
        )

    def level_sizes(self, outputs: dict[str, Any]) -> list[int]:
        """Locations per feature level of ``decode``'s P (for the per-level top-k): from ``feat_sizes``."""
        sizes = outputs.get("feat_sizes")
        if sizes is None:
            return [int(next(v for v in outputs.values() if isinstance(v, Tensor)).shape[1])]
        return [int(h) * int(w) for h, w in sizes]

    @torch.no_grad()
    def postprocess(self, outputs: dict[str, Any], image_sizes: Sequence[tuple[int, int]]) -> list[dict]:
        """Detections per image: ``boxes`` (Tensor[K, 4] xyxy pixels of the input, clipped to the image's
        (h, w)), ``scores`` (Tensor[K]) and ``labels`` (Tensor[K] int64), best first, K <= max detections."""
        from detforge.postprocess import detect

        scores, boxes = self.decode(outputs)
        return detect(
            scores, boxes, self.level_sizes(outputs), image_sizes, **asdict(self.postprocess_settings)
        )

    def class_layers(self) -> dict[str, tuple[int, int, int]]:
        """The state-dict keys of the layers whose dim 0 runs over the classes, each with its layout (groups,
        background, rows per class): what fine-tuning re-initialises for new classes and ``keep_classes``
        copies row by row (:func:`detforge.models.weights.copy_class_rows`). {} by default: a model that
        supports ``keep_classes`` says where its class layers are."""
        return {}

    # ------------------------------------------------------------------ images in, detections out
    @property
    def preprocess(self) -> Preprocess:
        """The input pre-processing :meth:`predict` follows (:class:`~detforge.models.preprocess.Preprocess`):
        the weights' own when the model was built with ``weights=`` (torchvision's resize and
        normalisation), else detforge's letterbox to the longer side of ``default_input_size``, black padding
        to a square (the validation transform of ``detforge train``)."""
        chosen = self.__dict__.get("_preprocess")
        if chosen is not None:
            return chosen
        side = max(self.default_input_size)
        return Preprocess(resize="letterbox", max_size=side, size_divisible=side, pad_value="zero")

    @preprocess.setter
    def preprocess(self, value: Preprocess) -> None:
        if not isinstance(value, Preprocess):
            raise TypeError(f"preprocess must be a detforge.models.preprocess.Preprocess, got {type(value).__name__}")
        self.__dict__["_preprocess"] = value

    @torch.no_grad()
    def predict(self, images: Tensor | Sequence[Tensor]) -> list[dict]:
        """Detections for ``images`` as users call torchvision's detectors: a list of Tensor[C, H, W] (or one
        batch Tensor[B, C, H, W]) float in [0, 1], any sizes. Each is resized and the batch padded as
        :attr:`preprocess` says, the model runs in eval mode, and each image gets a dict ``boxes``
        (Tensor[K, 4] xyxy in its own pixels), ``scores`` (Tensor[K]) and ``labels`` (Tensor[K] int64)."""
        from detforge.models.preprocess import batch_images, resize_image, scale_boxes_back

        if isinstance(images, Tensor):
            images = list(images) if images.ndim == 4 else [images]
        if not images:
            return []
        for i, image in enumerate(images):
            if not isinstance(image, Tensor) or image.ndim != 3 or image.shape[0] != self.in_chans:
                got = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
                raise ValueError(f"predict: image {i} must be a Tensor[{self.in_chans}, H, W] in [0, 1], got {got}")
            if not image.is_floating_point():
                raise ValueError(f"predict: image {i} is {image.dtype}; give floats in [0, 1] (uint8 / 255)")
        param = next(self.parameters(), None)
        device = param.device if param is not None else images[0].device
        preprocess = self.preprocess
        originals = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        resized = [resize_image(im.to(device, torch.float32), preprocess) for im in images]
        sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in resized]
        batch = batch_images(resized, preprocess)  # [B, C, H, W]
        was_training = self.training
        self.eval()
        try:
            detections = self.postprocess(forward_with_sizes(self, batch, sizes), sizes)
        finally:
            self.train(was_training)
        for det, size, original in zip(detections, sizes, originals, strict=True):
            det["boxes"] = scale_boxes_back(det["boxes"], size, original)
        return detections

    # ------------------------------------------------------------------ export hooks
    def export_inputs(self, images: Tensor) -> dict[str, Tensor]:
        """The ONNX graph's named inputs for an example batch (Tensor[B, C, H, W]); a model with explicit
        temporal state adds its state tensors here."""
        return {"images": images}

    def export_raw(self, **inputs: Tensor) -> dict[str, Tensor]:
        """What a raw ONNX graph returns: the tensor outputs of ``forward`` (named)."""
        outputs = self(inputs["images"])
        return {k: v for k, v in outputs.items() if isinstance(v, Tensor)}

    def export_detections(self, **inputs: Tensor) -> dict[str, Tensor]:
        """What an ONNX graph with detections returns: ``boxes`` [B, D, 4], ``scores`` [B, D], ``labels``
        [B, D] (-1 past the count) and ``num_detections`` [B], D = ``max_detections_per_image``."""
        from detforge.postprocess import detect_padded

        images = inputs["images"]
        outputs = self(images)
        scores, boxes = self.decode(outputs)
        h, w = images.shape[-2:]
        sizes = torch.tensor([[h, w]], device=images.device).expand(images.shape[0], 2)  # [B, 2]
        settings = asdict(self.postprocess_settings)
        settings.pop("soft_nms_sigma")
        if settings["nms_method"] in ("gaussian", "linear"):
            settings["nms_method"] = "hard"  # soft-NMS has no ONNX operator: the graph runs hard NMS
        boxes, scores, labels, counts = detect_padded(
            scores, boxes, self.level_sizes(outputs), sizes, **settings
        )
        return {"boxes": boxes, "scores": scores, "labels": labels, "num_detections": counts}

    @torch.no_grad()
    def outputs_from_export(self, raw: dict[str, Tensor], image_size: tuple[int, int]) -> dict[str, Any]:
        """``outputs`` for ``postprocess`` from a raw ONNX graph's named tensors (``export_raw``) at input
        ``image_size`` (h, w): the tensors plus the non-tensor entries ``forward`` adds (``feat_sizes``, ...),
        found once per size by a forward on a blank image."""
        key = (int(image_size[0]), int(image_size[1]))
        if key not in self._export_meta:
            param = next(self.parameters(), None)
            device = param.device if param is not None else torch.device("cpu")
            was_training = self.training
            self.eval()
            try:
                blank = self(torch.zeros(1, self.in_chans, *key, device=device))
            finally:
                self.train(was_training)
            self._export_meta[key] = {k: v for k, v in blank.items() if not isinstance(v, Tensor)}
        return {**self._export_meta[key], **raw}


Detector.forward_loss = _checks_targets(Detector.forward_loss, with_images=True)
