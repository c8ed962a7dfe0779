"""A flat name -> builder registry for user-facing model choices (timm's ``register_model`` style).

A builder is a function ``fn(num_classes: int = ..., **kwargs) -> nn.Module`` that returns a bare detector
(forward / loss / postprocess, no Lightning). Prefix resolvers build names on demand, e.g. ``fcos_<timm name>``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from torch import nn

from detforge.errors import InvalidValueError, MissingFileError

__all__ = [
    "create_model",
    "is_model",
    "list_models",
    "model_recipe",
    "register_model",
    "register_prefix",
]

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_PREFIXES: dict[str, Callable[..., nn.Module]] = {}
_RECIPES: dict[str, dict[str, Any]] = {}
_LOADED = False


def register_model(name: str | None = None, *, recipe: dict[str, Any] | None = None):
    """Decorator: register a builder under ``name`` (default: the function's name). Duplicates raise.

    ``recipe``: the model's training defaults, dotted ``detforge train`` keys (``{"model.lr": 1e-2}``), applied
    unless the command line or a config file sets them (:func:`model_recipe`)."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or fn.__name__
        if key in _MODELS:
            raise ValueError(f"model {key!r} is already registered")
        _MODELS[key] = fn
        if recipe:
            _RECIPES[key] = dict(recipe)
        return fn

    return wrap


def register_prefix(prefix: str, *, recipe: dict[str, Any] | None = None):
    """Decorator: ``fn(suffix, **kwargs)`` builds any model named ``prefix + suffix`` (e.g. ``fcos_``);
    ``recipe`` as in :func:`register_model`, for every model the prefix builds (a name's own recipe wins)."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if prefix in _PREFIXES:
            raise ValueError(f"model prefix {prefix!r} is already registered")
        _PREFIXES[prefix] = fn
        if recipe:
            _RECIPES[prefix] = dict(recipe)
        return fn

    return wrap


def model_recipe(name: str, weights: str | os.PathLike | None = None) -> dict[str, Any]:
    """The training defaults of model ``name`` from its registration: its own recipe, else the longest
    registered prefix's it starts with; with ``weights`` (a tag, or a file in the layout of the model's
    registered weights) the weights' fine-tuning recipe on top. {} when none."""
    _load_builtin()
    if name in _RECIPES:
        recipe = dict(_RECIPES[name])
    else:
        prefixes = [p for p in _RECIPES if p in _PREFIXES and name.startswith(p)]
        recipe = dict(_RECIPES[max(prefixes, key=len)]) if prefixes else {}
    if weights is not None:
        from detforge.models.weights import _WEIGHTS

        tags = _WEIGHTS.get(name, {})
        meta = tags.get(str(weights)) or tags.get("coco") or (tags[sorted(tags)[0]] if tags else None)
        if meta is not None:
            recipe.update(meta.recipe)
    return recipe


BUILTIN_MODULES = (
    "detforge.models.zoo",  # FCOS, YOLOX, detforge_n / detforge_s
    "detforge.models.edge",  # Nexus, Phantom, NightVision
    "detforge.models.yolov1",
    "detforge.models.yolov3",
    "detforge.models.centernet",
    "detforge.models.faster_rcnn",
    "detforge.models.detr",
    "detforge.models.retinanet",
    "detforge.models.ssd",
    "detforge.models.torchvision_zoo",  # torchvision's COCO detectors under their builder names
)
"""The modules whose import registers the built-in models: each family registers its builders itself."""


def _load_builtin() -> None:
    """Import the modules whose import registers the built-in models (lazily, to keep import cheap)."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    import importlib

    for mod in BUILTIN_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as err:  # a family not built yet
            if err.name != mod:
                raise


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted registered names, optionally filtered with an fnmatch ``pattern``."""
    _load_builtin()
    names = sorted(_MODELS)
    if pattern:
        import fnmatch

        names = [n for n in names if fnmatch.fnmatch(n, pattern)]
    return names


def is_model(name: str) -> bool:
    _load_builtin()
    return name in _MODELS or any(name.startswith(p) and len(name) > len(p) for p in _PREFIXES)


def create_model(
    name: str,
    weights: str | os.PathLike | None = None,
    keep_classes: list[str] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build the bare detector registered as ``name`` (or resolved by a prefix such as ``fcos_``): the one
    construction path of the CLI, ``ObjectDetector`` and the Python API.

    Args:
        name: a registered name (``detforge models``) or ``<prefix><timm name>``.
        weights: None (random init, or the backbone's own ``pretrained`` option), a tag of the model's
            registered weights (``"coco"``: downloaded into torch hub's cache when not there yet) or the path of
            a weight file in the layout of the model's registered weights (e.g. torchvision's ``.pth``). The
            class names, input pre-processing and post-processing come with the weights; a ``num_classes``
            other than the weights' builds a model for those classes whose class layers start anew
            (fine-tuning; listed in ``model.reinitialized``).
        keep_classes: with ``weights`` and another ``num_classes``: the new classes' names; the class-layer
            rows of those whose name is one of the weights' (COCO's "person", "car", ...) are copied from the
            weights instead of starting anew (``model.kept_classes`` lists them).
        **kwargs: the builder's arguments (``num_classes``, the model's options).
    """
    _load_builtin()
    if weights is not None:
        return _create_with_weights(name, weights, kwargs, keep_classes)
    if keep_classes is not None:
        raise ValueError("keep_classes needs weights (the named weights whose class rows it keeps)")
    if name in _MODELS:
        return _MODELS[name](**kwargs)
    for prefix, fn in _PREFIXES.items():
        if name.startswith(prefix) and len(name) > len(prefix):
            return fn(name[len(prefix) :], **kwargs)
    raise InvalidValueError(
        f"unknown model {name!r}; registered: {', '.join(list_models())}"
        + (
            f"; or a prefix + timm name: {', '.join(p + '<timm name>' for p in _PREFIXES)}"
            if _PREFIXES
            else ""
        )
    )


def _create_with_weights(
    name: str, weights: str | os.PathLike, kwargs: dict[str, Any], keep_classes: list[str] | None = None
) -> nn.Module:
    """``create_model(name, weights=...)``: the model built for the weights' classes and options, loaded."""
    from detforge.models.weights import _WEIGHTS, get_weights, is_weights_tag, load_weights

    path = None
    if isinstance(weights, str) and is_weights_tag(name, weights):
        meta = get_weights(name, weights)
    else:
        path = os.fspath(weights)
        if not os.path.isfile(path):
            tags = ", ".join(sorted(_WEIGHTS.get(name, {}))) or "none registered"
            raise MissingFileError(
                f"weights {path!r} for model {name!r} are neither a registered tag ({tags}) nor a file"
            )
        tags = _WEIGHTS.get(name, {})
        if not tags:
            raise InvalidValueError(
                f"model {name!r} has no registered weights whose layout {path!r} could have; load a detforge "
                "checkpoint with --ckpt, or a backbone file with pretrained=PATH"
            )
        meta = tags["coco"] if "coco" in tags else tags[sorted(tags)[0]]
    built_classes = len(meta.class_names)
    num_classes = int(kwargs.get("num_classes", built_classes))
    model = create_model(name, **{**meta.model_kwargs, "num_classes": num_classes, **kwargs})
    if keep_classes is not None and len(keep_classes) != num_classes:
        raise InvalidValueError(f"keep_classes has {len(keep_classes)} names for num_classes={num_classes}")
    load_weights(model, meta, path, strict_classes=num_classes == built_classes, keep_classes=keep_classes)
    if num_classes == built_classes:
        model.class_names = tuple(meta.class_names)
        model.category_ids = None if meta.category_ids is None else tuple(meta.category_ids)
    return model
