"""Config -> model: :func:`build_model` turns ``ObjectDetector``'s model options into a built
:class:`~detforge.models.base.Detector` through the model registry.

A registered name, or the autotimm form (``backbone`` + ``detection_arch``: the registered
``<arch>_<timm name>`` with the backbone's options, the input size and the pyramid's levels), is built by
:func:`detforge.models.registry.create_model`; every option set goes to the builder, and one it does not take
raises a ValueError naming it. A built model (or its ``class_path`` / ``init_args`` dict from a checkpoint) is
taken as it is and checked against the class count, image channels and strides.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from torch import nn

from detforge.errors import InvalidValueError
from detforge.models.backbone import FeatureBackboneConfig
from detforge.models.base import Detector

__all__ = ["MODEL_OPTIONS", "DetectionArch", "build_model", "check_detection_arch"]

DetectionArch = Literal["fcos", "yolox"]
"""The head of the autotimm form: ``<arch>_<timm name>`` in the registry."""

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
    "anchors",
    "score_thresh",
    "nms_thresh",
    "pre_nms_topk",
    "max_detections_per_image",
    "nms_method",
    "soft_nms_sigma",
)
"""ObjectDetector's model options: None keeps the model's default, a value goes to the model's builder."""


def check_detection_arch(detection_arch: str | None) -> None:
    """ValueError listing the allowed values unless ``detection_arch`` is None or a :data:`DetectionArch`."""
    if detection_arch is not None and detection_arch not in get_args(DetectionArch):
        raise ValueError(f"detection_arch must be one of {get_args(DetectionArch)}, got {detection_arch!r}")


def build_model(
    model: str | nn.Module | dict | None,
    *,
    backbone: str | FeatureBackboneConfig | dict | None = None,
    detection_arch: DetectionArch | None = None,
    options: dict[str, Any] | None = None,
    strides: tuple[int, ...] | None = None,
    model_kwargs: dict[str, Any] | None = None,
    num_classes: int | None = None,
    in_chans: int = 3,
    imgsz: int | None = None,
    weights: str | None = None,
    keep_classes: list[str] | None = None,
) -> nn.Module:
    """The detector ``ObjectDetector`` wraps (its arguments of the same names; ``options``: the model options
    that are set). A registered name, or the autotimm form (``backbone`` + ``detection_arch``: the registered
    ``<arch>_<timm name>``), is built by :func:`detforge.models.registry.create_model` with ``num_classes``,
    ``in_chans``, ``options``, ``model_kwargs`` and ``weights`` (a registered tag or a file); a built module (or its ``class_path`` / ``init_args`` dict
    from a checkpoint) is taken as it is and must agree with ``num_classes`` and ``in_chans``.

    Example: ``build_model(None, backbone=FeatureBackboneConfig("resnet18", drop_path_rate=0.1),
    options={"fpn_channels": 64}, num_classes=3, imgsz=256)`` builds ``fcos_resnet18``.

    Raises:
        ValueError: an option or ``model_kwargs`` entry the builder does not take, options given with a built
            model, strides no pyramid of the model has, or a class / channel count that disagrees.
    """
    check_detection_arch(detection_arch)
    options, model_kwargs = dict(options or {}), dict(model_kwargs or {})
    if weights is not None and not isinstance(model, str):
        raise ValueError(
            f"weights={weights!r} needs a registered model name (--model NAME), not "
            f"{'the autotimm form' if model is None else type(model).__name__}"
        )
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
        kwargs = _backbone_kwargs(cfg)
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
        extra = {} if weights is None else {"weights": weights, "keep_classes": keep_classes}
        model = _create(name, {**kwargs, **options, **model_kwargs, **extra}, set(options))
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


def _backbone_kwargs(cfg: FeatureBackboneConfig) -> dict[str, Any]:
    """The ``fcos_`` / ``yolox_`` builder arguments of a ``FeatureBackboneConfig``: ``pretrained``,
    ``out_indices`` and ``backbone_kwargs`` (dropout rates, timm keyword arguments), each only when set."""
    default = FeatureBackboneConfig(cfg.model_name)
    kwargs: dict[str, Any] = {}
    if cfg.pretrained != default.pretrained:
        kwargs["pretrained"] = cfg.pretrained
    if cfg.out_indices is not None:
        kwargs["out_indices"] = tuple(cfg.out_indices)
    rest = {
        k: getattr(cfg, k)
        for k in ("drop_rate", "drop_path_rate", "extra_kwargs")
        if getattr(cfg, k) != getattr(default, k)
    }
    if rest:
        kwargs["backbone_kwargs"] = rest
    return kwargs


def _create(name: str, kwargs: dict[str, Any], options: set[str]) -> nn.Module:
    """``create_model(name, **kwargs)``; a keyword the builder does not take raises a ValueError naming it
    (``options``: the keys that came from ObjectDetector's options, the rest from ``model_kwargs``)."""
    import re

    from detforge.models.registry import create_model

    try:
        return create_model(name, **kwargs)
    except TypeError as err:
        match = re.search(r"unexpected keyword argument '(\w+)'", str(err))
        key = match.group(1) if match else None
        if key not in kwargs:
            raise
        where = "ObjectDetector option" if key in options else "model_kwargs entry"
        raise InvalidValueError(f"model {name!r} does not take {key}={kwargs[key]!r} (an {where})") from err


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
