"""Built-in FCOS / YOLOX detectors on timm backbones, registered in the flat model registry.

- ``fcos_<timm name>`` and ``yolox_<timm name>``: built on demand for any timm model with ``features_only``
  support, e.g. ``create_model("fcos_resnet18", num_classes=20)``;
- ``detforge_n``: the CPU-friendly default (FCOS on mobilenetv3_small_100, 64-channel FPN, strides 8-64,
  quality focal loss, 256 px input);
- ``detforge_s``: the same design on mobilenetv4_conv_small with the focal loss, the default before
  ``detforge_n`` (its checkpoints keep loading by this name);
- ``fcos_resnet18``, ``fcos_resnet50``, ``yolox_resnet18`` are listed by name.

Every builder takes ``num_classes`` (default 80), ``pretrained`` (False, True for timm's hub weights, or a
path to a local weight file) and the detector's own keyword arguments, and returns the bare detector; the
prefix builders also take ``out_indices`` and ``backbone_kwargs`` (dropout rates, timm keyword arguments).
"""

from __future__ import annotations

from typing import Any

from detforge.models.backbone import FeatureBackboneConfig
from detforge.models.fcos import FCOS
from detforge.models.registry import register_model, register_prefix
from detforge.models.yolox import YOLOX

__all__ = ["build_fcos", "build_yolox", "detforge_n", "detforge_s"]


def _backbone(
    name: str,
    pretrained: bool | str,
    out_indices: tuple[int, ...] | None,
    backbone_kwargs: dict[str, Any] | None = None,
) -> FeatureBackboneConfig:
    """The ``FeatureBackboneConfig`` of a prefix builder's arguments. ``backbone_kwargs``: ``drop_rate``,
    ``drop_path_rate``, ``extra_kwargs`` (a dict) and any other key, which goes to ``timm.create_model`` with
    ``extra_kwargs``."""
    indices = None if out_indices is None else tuple(out_indices)
    rest = dict(backbone_kwargs or {})
    fields = {key: rest.pop(key) for key in ("drop_rate", "drop_path_rate") if key in rest}
    extra = dict(rest.pop("extra_kwargs", None) or {})
    taken = sorted({"model_name", "pretrained", "out_indices"} & set(rest))
    if taken:
        raise ValueError(
            f"backbone_kwargs: give {taken} as the builder's own arguments, not in backbone_kwargs"
        )
    extra.update(rest)
    return FeatureBackboneConfig(
        name, pretrained=pretrained, out_indices=indices, extra_kwargs=extra, **fields
    )


@register_prefix("fcos_")
def build_fcos(
    timm_name: str,
    num_classes: int = 80,
    pretrained: bool | str = False,
    out_indices: tuple[int, ...] | None = None,
    backbone_kwargs: dict[str, Any] | None = None,
    **kwargs: Any,
) -> FCOS:
    """FCOS on the timm backbone ``timm_name`` (strides 8-128 with the default P6/P7 levels).

    ``backbone_kwargs``: the backbone's further options (``drop_rate``, ``drop_path_rate``, ``extra_kwargs``;
    other keys go to ``timm.create_model``), e.g. ``{"drop_path_rate": 0.1}``."""
    backbone = _backbone(timm_name, pretrained, out_indices, backbone_kwargs)
    return FCOS(backbone, num_classes, **kwargs)


@register_prefix("yolox_")
def build_yolox(
    timm_name: str,
    num_classes: int = 80,
    pretrained: bool | str = False,
    out_indices: tuple[int, ...] | None = None,
    backbone_kwargs: dict[str, Any] | None = None,
    **kwargs: Any,
) -> YOLOX:
    """YOLOX-style detector on the timm backbone ``timm_name`` (strides 8, 16, 32); ``backbone_kwargs`` as
    in :func:`build_fcos`."""
    backbone = _backbone(timm_name, pretrained, out_indices, backbone_kwargs)
    return YOLOX(backbone, num_classes, **kwargs)


_SMALL_FCOS: dict[str, Any] = dict(fpn_channels=64, head_num_convs=2, extra_levels=1, input_size=(256, 256))


@register_model("detforge_n", recipe={"model.lr": 1e-2})
def detforge_n(num_classes: int = 80, pretrained: bool | str = False, **kwargs: Any) -> FCOS:
    """CPU-friendly FCOS, the default model: mobilenetv3_small_100, 64-channel FPN + one extra level (strides
    8-64), 2-conv GroupNorm head, IoU-aware classification (quality focal loss); 256 px default input (the
    default `detforge train` recipe trains it at 128 px).

    Backbone and loss were picked by training from scratch in the default recipe's time budget: on 2 CPU
    cores, mobilenetv3_small_100 reached 0.36 mAP where mobilenetv4_conv_small, lcnet_100 and
    mobilenetv3_large_075 reached 0.18-0.22, and the quality focal loss added 0.03 over the focal loss."""
    options: dict[str, Any] = dict(_SMALL_FCOS, cls_loss_fn="quality_focal")
    options.update(kwargs)
    return build_fcos("mobilenetv3_small_100", num_classes, pretrained, **options)


@register_model("detforge_s")
def detforge_s(num_classes: int = 80, pretrained: bool | str = False, **kwargs: Any) -> FCOS:
    """Small FCOS: mobilenetv4_conv_small, 64-channel FPN + one extra level (strides 8-64), 2-conv GroupNorm
    head, focal loss; 256 px default input. The default model before ``detforge_n``."""
    options: dict[str, Any] = dict(_SMALL_FCOS)
    options.update(kwargs)
    return build_fcos("mobilenetv4_conv_small", num_classes, pretrained, **options)


def _named(prefix_builder, timm_name: str):
    def build(num_classes: int = 80, pretrained: bool | str = False, **kwargs: Any):
        return prefix_builder(timm_name, num_classes, pretrained, **kwargs)

    build.__doc__ = f"{prefix_builder.__doc__.split(' on ')[0]} on timm's {timm_name}."
    return build


for _prefix, _builder, _names in (
    ("fcos_", build_fcos, ("resnet18", "resnet50")),
    ("yolox_", build_yolox, ("resnet18",)),
):
    for _name in _names:
        register_model(_prefix + _name)(_named(_builder, _name))
