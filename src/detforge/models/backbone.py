"""Feature backbones from timm (``features_only=True``) for the FPN detectors.

``build_backbone("resnet18")`` returns timm's feature extractor: ``backbone(images)`` gives a list of feature
maps, ``backbone.feature_info.channels()`` / ``.reduction()`` their channels and strides. By default it returns
the last three feature levels of any timm model (strides 8, 16, 32 on ResNets, ConvNeXt, Swin, ...).

Any timm backbone feeds the FPN through :class:`PyramidBackbone`:

- feature maps a model gives channels-last (``output_fmt == "NHWC"``, e.g. Swin) are permuted to NCHW;
- single-stride backbones (ViT, DeiT: every level at stride 16) get a ViTDet simple feature pyramid
  (:class:`~detforge.models.necks.SimplePyramid`) built from their last feature map;
- models whose timm config has a fixed input size (ViT, DeiT, Swin) are built with ``dynamic_img_size=True``
  so they run at any input size: ViT / DeiT at heights and widths divisible by the patch size (16; multiples
  of 32 keep the stride-32 level exact), Swin at any size (its windows are padded; tested down to 32 px,
  multiples of 32 keep every level exact). ``build_backbone(..., input_size=(h, w))`` builds them for
  (h, w) (timm's ``img_size``): a ViT / DeiT exports to ONNX only at that size, 224 by default.
  ``extra_kwargs={"img_size": (h, w)}`` builds a fixed-size model instead; feeding it another size raises a
  ValueError naming the sizes;
- options a timm model's constructor rejects (``dynamic_img_size``, a zero ``drop_rate`` / ``drop_path_rate``)
  are left out for it, e.g. for MLP-Mixer (then built at its fixed size) or EfficientViT (MSRA).

Pretrained weights: ``pretrained=False`` (the default) never touches the network; ``pretrained=True`` loads
timm's hub weights (needs internet); ``pretrained="PATH"`` loads a local weight file through timm's
``pretrained_cfg_overlay=dict(file=PATH)``, or a torchvision ImageNet checkpoint (``mobilenet_v2-b0353104.pth``,
``resnet50-*.pth``: ``torchvision.models`` state dicts) for the matching timm model (``mobilenetv2_100``,
``resnet50``), mapped and checked tensor by tensor (:mod:`detforge.models.pretrained`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import timm
import torch
from timm.utils.model import freeze
from torch import Tensor, nn

from detforge.errors import InvalidValueError, UserError
from detforge.models.frozen_norm import fuse_frozen_batchnorm
from detforge.models.necks.fpn import FPN
from detforge.models.necks.simple_pyramid import SimplePyramid
from detforge.models.pretrained import (
    check_known_layout,
    detect_layout,
    load_into,
    load_state_dict_file,
    torchvision_to_timm,
)

__all__ = [
    "FeatureBackboneConfig",
    "FeatureBody",
    "PretrainedWeightsError",
    "PyramidBackbone",
    "build_backbone",
    "fixed_input_size",
    "freeze_backbone",
]


class PretrainedWeightsError(UserError, RuntimeError):
    """Pretrained weights could not be fetched from the hub (offline, or the name has no weights)."""


@dataclass
class FeatureBackboneConfig:
    """What to build: a timm model name and its feature-extractor options.

    Attributes:
        model_name: any timm model name that supports ``features_only`` (``timm.list_models()``).
        pretrained: False (random init), True (timm hub download) or a path to a local weight file
            (``.safetensors``, ``.pth``, ``.bin``) in timm's layout for ``model_name``, or a torchvision
            ImageNet state dict of the same architecture (``resnet*``, ``mobilenetv2_*``).
        out_indices: which feature levels to return (indices into the model's ``feature_info``). None (the
            default): the last three, read from timm's ``feature_info`` (timm's ``out_indices=3``): strides 8,
            16, 32 on ResNets / MobileNets (the same levels as (2, 3, 4)), ConvNeXt and Swin (4 stages), the
            last three blocks (all stride 16) of a ViT, of which the pyramid uses the last.
        drop_rate: dropout rate passed to timm.
        drop_path_rate: stochastic depth rate passed to timm.
        extra_kwargs: further keyword arguments for ``timm.create_model``.
    """

    model_name: str
    pretrained: bool | str = False
    out_indices: tuple[int, ...] | None = None
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    extra_kwargs: dict[str, Any] = field(default_factory=dict)


def build_backbone(
    backbone: str | FeatureBackboneConfig, in_chans: int = 3, input_size: tuple[int, int] | None = None
) -> nn.Module:
    """Build a timm feature extractor.

    Args:
        backbone: a timm model name (random init, the last three feature levels) or a ``FeatureBackboneConfig``.
        in_chans: input image channels (3 for RGB, 1 for grayscale / thermal).
        input_size: (h, w) a model with a fixed-size timm config (ViT, DeiT, Swin) is built for (timm's
            ``img_size``: the position-embedding grid, Swin's window sizes); it still takes other sizes
            (``dynamic_img_size``), but exports to ONNX only at this one (resampling the position embedding
            uses antialiased bicubic interpolation, which ONNX opset 17 lacks). None: timm's default (224).
            Ignored when ``extra_kwargs`` sets ``img_size``, ``dynamic_img_size`` or ``strict_img_size``.

    Returns:
        The timm module: ``forward(images Tensor[B, in_chans, H, W]) -> list[Tensor[B, C_i, H / s_i, W / s_i]]``,
        with ``.feature_info.channels()`` (C_i) and ``.feature_info.reduction()`` (s_i).

    Raises:
        ValueError: unknown timm model name.
        FileNotFoundError: ``pretrained`` is a path that does not exist.
        WeightMappingError: a torchvision weight file does not fit the model (names the first tensor).
        PretrainedWeightsError: ``pretrained=True`` and the hub download failed.
    """
    cfg = FeatureBackboneConfig(backbone) if isinstance(backbone, str) else backbone
    if not timm.is_model(cfg.model_name):
        raise InvalidValueError(
            f"unknown timm model {cfg.model_name!r}; see timm.list_models() for names (e.g. 'resnet18', "
            "'mobilenetv3_small_100', 'convnext_nano')"
        )
    kwargs: dict[str, Any] = dict(
        features_only=True,
        out_indices=_LAST_THREE if cfg.out_indices is None else tuple(cfg.out_indices),
        in_chans=in_chans,
        **cfg.extra_kwargs,
    )
    # Options a timm model may not take: left out for the models that reject them (zero drop rates, and the
    # size options chosen here, not by the user).
    optional = _size_kwargs(cfg, input_size)
    for key in ("drop_rate", "drop_path_rate"):
        value = getattr(cfg, key)
        (optional if value == 0 else kwargs)[key] = value
    pretrained = cfg.pretrained
    if isinstance(pretrained, str | os.PathLike) and not isinstance(pretrained, bool):
        path = os.fspath(pretrained)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"pretrained weight file for backbone {cfg.model_name!r} not found: {path}"
            )
        state = load_state_dict_file(path)
        layout = detect_layout(state)
        if layout == "other":  # timm's own layout: timm loads it (and adapts stem / classifier)
            kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=path))
            model = _create(cfg.model_name, kwargs, optional)
            check_known_layout(model, state, cfg.model_name, path)
            return model
        model = _create(cfg.model_name, dict(kwargs, pretrained=False), optional)
        mapped = torchvision_to_timm(state, layout, cfg.model_name)
        return load_into(model, mapped, cfg.model_name, f"{path} ({layout})")
    if not pretrained:
        return _create(cfg.model_name, dict(kwargs, pretrained=False), optional)
    try:
        return _create(cfg.model_name, dict(kwargs, pretrained=True), optional)
    except (OSError, RuntimeError, ValueError, ConnectionError, ImportError) as err:
        raise PretrainedWeightsError(
            f"could not download pretrained weights for backbone {cfg.model_name!r} ({type(err).__name__}: "
            f"{err}); without internet, pass pretrained='PATH' with a local weight file instead"
        ) from err


# timm's ``out_indices=<int n>`` selects the last n levels of ``feature_info`` (timm >= 1.0).
_LAST_THREE = 3
_SIZE_KEYS = ("img_size", "dynamic_img_size", "strict_img_size")


def _size_kwargs(cfg: FeatureBackboneConfig, input_size: tuple[int, int] | None) -> dict[str, Any]:
    """``dynamic_img_size=True`` (and ``img_size=input_size``) for models whose timm config fixes the input
    size (ViT, DeiT, Swin), unless the user chose a size option in ``cfg.extra_kwargs``."""
    if any(key in cfg.extra_kwargs for key in _SIZE_KEYS):
        return {}
    try:
        pretrained_cfg = timm.get_pretrained_cfg(cfg.model_name)
    except RuntimeError:  # an unknown pretrained tag: timm.create_model names it
        return {}
    if not getattr(pretrained_cfg, "fixed_input_size", False):
        return {}
    size = {} if input_size is None else {"img_size": tuple(int(v) for v in input_size)}
    return {"dynamic_img_size": True, **size}


def _create(model_name: str, kwargs: dict[str, Any], optional: dict[str, Any]) -> nn.Module:
    """``timm.create_model(model_name, **kwargs, **optional)``, leaving out each ``optional`` argument the
    model's constructor rejects (a TypeError naming it, raised before anything is built)."""
    optional = dict(optional)
    while True:
        try:
            return timm.create_model(model_name, **kwargs, **optional)
        except TypeError as err:
            rejected = [key for key in optional if f"'{key}'" in str(err)]
            if not rejected:
                raise
            for key in rejected:
                del optional[key]


def _model_name(backbone: str | FeatureBackboneConfig | nn.Module, body: nn.Module) -> str:
    if isinstance(backbone, str):
        return backbone
    if isinstance(backbone, FeatureBackboneConfig):
        return backbone.model_name
    cfg = getattr(body, "pretrained_cfg", None) or {}
    return str(cfg.get("architecture", type(body).__name__))


def fixed_input_size(body: nn.Module) -> tuple[int, int] | None:
    """``img_size`` (h, w) of the first patch embedding of ``body`` built with ``strict_img_size`` (the input
    size of a ViT, DeiT, Swin or MLP-Mixer built without ``dynamic_img_size``), or None when it has none."""
    for module in body.modules():
        size = getattr(module, "img_size", None)
        if getattr(module, "strict_img_size", False) and size is not None:
            h, w = (size, size) if isinstance(size, int) else size
            return int(h), int(w)
    return None


def freeze_backbone(backbone: nn.Module) -> nn.Module:
    """Freeze ``backbone`` in place: no gradients, and BatchNorm layers become frozen BatchNorm (timm's
    ``freeze``, with the fused forward of :mod:`detforge.models.frozen_norm`) so their statistics stay fixed in
    ``train()`` mode too. Returns the same module."""
    freeze(backbone)
    fuse_frozen_batchnorm(backbone)
    return backbone


def freeze_stages(body: nn.Module, max_stride: int) -> list[str]:
    """Freeze the stem and the leading stages of a timm feature body whose outputs have a stride of at most
    ``max_stride`` (detectron2's ``FREEZE_AT``: 4 = stem and the stride-4 stage, torchvision's
    ``trainable_backbone_layers=3`` on a ResNet): no gradients, BatchNorm as ``FrozenBatchNorm2d``. Backward
    then stops before them, at full resolution the costliest layers to differentiate.

    The stages come from timm's ``feature_info`` (every level, not only the ones the body returns): the
    module of the last level at ``<= max_stride`` and every module registered before it on its path (timm
    registers a body's modules in the order they run). Returns the frozen submodule names.
    """
    info = getattr(getattr(body, "feature_info", None), "info", None)
    if not info:
        raise ValueError(
            f"freeze_backbone_stride: {type(body).__name__} has no timm feature_info to find its stages in"
        )
    levels = [level for level in info if int(level["reduction"]) <= max_stride]
    if not levels:
        raise ValueError(
            f"freeze_backbone_stride={max_stride}: the backbone's first stage has stride {info[0]['reduction']}"
        )
    names = dict(body.named_modules())
    target = levels[-1]["module"]
    target = target if target in names else target.replace(".", "_")  # FeatureListNet flattens "layers.0"
    if target not in names:
        raise ValueError(f"freeze_backbone_stride: no module {levels[-1]['module']!r} in the backbone")
    frozen: list[str] = []
    parent, path = body, target.split(".")
    for depth, part in enumerate(path):
        prefix = ".".join(path[:depth])
        for name, _ in parent.named_children():
            if name == part:
                break
            frozen.append(f"{prefix}.{name}" if prefix else name)
        parent = parent.get_submodule(part)
    frozen.append(target)
    freeze(body, frozen)
    fuse_frozen_batchnorm(body)
    return frozen


class FeatureBody(nn.Module):
    """Input normalisation and a timm feature backbone, no neck: images in [0, 1] -> NCHW feature maps,
    finest first. What every family puts its own neck or head on (:class:`PyramidBackbone` adds an FPN).

    Args:
        backbone: a timm model name, a ``FeatureBackboneConfig`` or an already built timm feature extractor
            (anything with ``feature_info.channels()`` / ``.reduction()`` returning a list of feature maps,
            channels-last when its ``output_fmt`` is "NHWC").
        in_chans: image channels; 1-channel images are normalised with the mean of the RGB statistics.
        input_size: (h, w) fixed-size transformer backbones are built for (see :func:`build_backbone`); pass
            the detector's input size so that its ONNX export works for ViT / DeiT.
        normalize: subtract the backbone's pretraining mean and divide by its std inside ``forward``
            (timm's ``pretrained_cfg``, ImageNet statistics by default).
        pyramid_scales: when every level has the same stride (ViT, DeiT: 16), ``self.simple`` (a
            :class:`SimplePyramid`) turns the last map into these scales of it (default: strides 8, 16, 32).
        simple_pyramid: False keeps equal-stride levels as they are, without the simple pyramid
            (torchvision's MobileNetV3-FPN feeds two stride-32 maps to its FPN).

    Attributes:
        body: the timm feature extractor (what ``freeze_backbone`` freezes).
        channels, strides: of the maps ``forward`` returns, finest first (from ``feature_info``).

    ``forward(images Tensor[B, in_chans, H, W] in [0, 1]) -> list[Tensor[B, C_i, H / s_i, W / s_i]]``.
    """

    def __init__(
        self,
        backbone: str | FeatureBackboneConfig | nn.Module,
        in_chans: int = 3,
        input_size: tuple[int, int] | None = None,
        normalize: bool = True,
        pyramid_scales: tuple[float, ...] = (2.0, 1.0, 0.5),
        simple_pyramid: bool = True,
    ) -> None:
        super().__init__()
        if isinstance(backbone, nn.Module):
            self.body = backbone
        else:
            self.body = build_backbone(backbone, in_chans, input_size)
        self.name = _model_name(backbone, self.body)
        info = self.body.feature_info
        channels, strides = [int(c) for c in info.channels()], [int(s) for s in info.reduction()]
        fmt = getattr(self.body, "output_fmt", "NCHW")
        self.channels_last_features = str(getattr(fmt, "value", fmt)) == "NHWC"
        self.fixed_input_size = fixed_input_size(self.body)
        if len(set(strides)) == 1 and simple_pyramid:
            self.simple: SimplePyramid | None = SimplePyramid(channels[-1], strides[-1], pyramid_scales)
            channels, strides = list(self.simple.channels), list(self.simple.strides)
        else:
            self.simple = None
        self.channels: tuple[int, ...] = tuple(channels)
        self.strides: tuple[int, ...] = tuple(strides)
        self.in_chans = int(in_chans)
        cfg = getattr(self.body, "pretrained_cfg", None) or {}
        mean = torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406)), dtype=torch.float32)
        std = torch.tensor(cfg.get("std", (0.229, 0.224, 0.225)), dtype=torch.float32)
        if mean.numel() != in_chans:
            mean, std = mean.mean().expand(in_chans), std.mean().expand(in_chans)
        self.normalize = normalize
        self.register_buffer("pixel_mean", mean.reshape(1, -1, 1, 1).clone(), persistent=False)
        self.register_buffer("pixel_std", std.reshape(1, -1, 1, 1).clone(), persistent=False)

    def forward(self, images: Tensor) -> list[Tensor]:
        if images.dim() != 4 or images.shape[1] != self.in_chans:
            raise ValueError(
                f"expected images of shape [B, {self.in_chans}, H, W], got {tuple(images.shape)}"
            )
        if self.normalize:
            images = (images - self.pixel_mean) / self.pixel_std
        features = self._run_body(images)  # list of Tensor[B, C_i, H_i, W_i] ([B, H_i, W_i, C_i] if NHWC)
        if self.channels_last_features:
            features = [f.permute(0, 3, 1, 2) for f in features]  # [B, C_i, H_i, W_i]
        if self.simple is not None:
            features = self.simple(features[-1])
        return list(features)

    def _run_body(self, images: Tensor) -> list[Tensor]:
        if self.fixed_input_size is None:
            return self.body(images)
        try:
            return self.body(images)
        except AssertionError as err:  # timm's patch embedding asserts the size it was built for
            h, w = images.shape[-2:]
            raise ValueError(
                f"backbone {self.name!r} has a fixed input size (its patch embedding takes "
                f"{self.fixed_input_size}) and failed on {h}x{w} images ({err}); resize the images, or build it "
                f"for this size with FeatureBackboneConfig(..., extra_kwargs={{'img_size': ({h}, {w})}}) or, "
                f"if the timm model has that option, for any size with extra_kwargs={{'dynamic_img_size': True}}"
            ) from err


class PyramidBackbone(FeatureBody):
    """Input normalisation, a timm feature backbone and an FPN: images in [0, 1] -> pyramid features.

    Args:
        backbone, in_chans, normalize, input_size: as in :class:`FeatureBody`.
        fpn_channels: channels of every pyramid level.
        extra_levels: stride-2 levels added above the pyramid's coarsest one (2 gives FCOS's P6, P7).
        fpn_norm_layer: normalisation after the FPN's convolutions (:class:`~detforge.models.necks.FPN`'s
            ``norm_layer``; torchvision's v2 models: ``nn.BatchNorm2d``); None: none.
        simple_pyramid: as in :class:`FeatureBody`; False also lets the FPN take equal-stride levels.
        extra_from: what the first extra level convolves, "fpn" (P5) or "backbone" (C5) (the FPN's).

    The FPN gets the backbone's levels (a single-stride ViT's through ViTDet's simple pyramid, strides 8-32);
    ``self.strides`` holds the strides of the output levels.

    ``forward(images Tensor[B, in_chans, H, W] in [0, 1]) -> list[Tensor[B, fpn_channels, H / s, W / s]]``
    for every stride ``s`` in ``self.strides``.
    """

    def __init__(
        self,
        backbone: str | FeatureBackboneConfig | nn.Module,
        fpn_channels: int = 256,
        extra_levels: int = 2,
        in_chans: int = 3,
        normalize: bool = True,
        input_size: tuple[int, int] | None = None,
        fpn_norm_layer: Callable[..., nn.Module] | None = None,
        simple_pyramid: bool = True,
        extra_from: Literal["fpn", "backbone"] = "fpn",
    ) -> None:
        super().__init__(backbone, in_chans, input_size, normalize, simple_pyramid=simple_pyramid)
        self.fpn = FPN(
            list(self.channels), list(self.strides), fpn_channels, extra_levels, norm_layer=fpn_norm_layer,
            allow_equal_strides=not simple_pyramid, extra_from=extra_from,
        )  # fmt: skip
        self.strides = self.fpn.strides
        self.channels = (int(fpn_channels),) * len(self.strides)

    def forward(self, images: Tensor) -> list[Tensor]:
        return self.fpn(super().forward(images))
