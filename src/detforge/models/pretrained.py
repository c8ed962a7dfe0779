"""Local pretrained weight files for timm backbones, including torchvision's ImageNet checkpoints.

``pretrained="PATH"`` (:func:`detforge.models.backbone.build_backbone`) accepts

- a timm checkpoint for the model (loaded by timm, as before), and
- a torchvision ``torchvision.models.*`` state dict (``mobilenet_v2-b0353104.pth``, ``resnet18-f37072fd.pth``,
  ``resnet50-0676ba61.pth``, ...: the files of a torch hub cache) for the matching timm architecture:
  torchvision's ResNet / ResNeXt / Wide ResNet into timm's ``resnet*`` / ``resnext*`` / ``wide_resnet*``,
  torchvision's MobileNetV2 into timm's ``mobilenetv2_*``.

:func:`detect_layout` tells the layouts apart from the file's parameter names; :func:`torchvision_to_timm` maps
the names tensor by tensor (into the names of timm's full classification model); :func:`load_into` copies
them into a built (feature) model after checking that every tensor the model has is in the file with the same
shape, and raises a :class:`WeightMappingError` naming the first missing or mismatching tensor otherwise.
Classifier weights and the layers a feature extractor drops (MobileNetV2's last 1x1 conv) are left out.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

from detforge.errors import UserError

__all__ = [
    "Layout",
    "WeightMappingError",
    "check_known_layout",
    "detect_layout",
    "load_into",
    "load_state_dict_file",
    "torchvision_to_timm",
]

Layout = Literal["torchvision_resnet", "torchvision_mobilenet_v2", "other"]


class WeightMappingError(UserError, ValueError):
    """A weight file does not fit the model: unknown layout, a tensor missing or of another shape."""


def load_state_dict_file(path: str | os.PathLike) -> dict[str, Tensor]:
    """The tensors of a ``.pth`` / ``.pt`` / ``.bin`` (``torch.load``, weights only) or ``.safetensors`` file;
    a checkpoint dict holding ``state_dict`` / ``model`` is unwrapped."""
    path = os.fspath(path)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return dict(load_file(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise WeightMappingError(
            f"{path}: expected a state dict (name -> tensor), got {type(state).__name__}"
        )
    return {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, Tensor)}


def detect_layout(state: dict[str, Tensor]) -> Layout:
    """Which layout a state dict has, from its parameter names.

    ``torchvision_resnet``: ``conv1`` / ``layer1.0.conv1`` / ``fc`` (torchvision's ResNet family; timm's plain
    ResNets use the same names). ``torchvision_mobilenet_v2``: ``features.0.0`` ... ``features.18.0`` with
    ``features.1.conv.0.0`` (an inverted-residual block). ``other``: anything else (e.g. a timm checkpoint).
    """
    keys = set(state)
    if {"conv1.weight", "layer1.0.conv1.weight", "fc.weight"} <= keys:
        return "torchvision_resnet"
    if {"features.0.0.weight", "features.1.conv.0.0.weight", "features.18.0.weight"} <= keys:
        return "torchvision_mobilenet_v2"
    return "other"


# timm families a torchvision layout fits (model-name prefixes).
_FAMILIES: dict[str, tuple[str, ...]] = {
    "torchvision_resnet": ("resnet", "resnext", "wide_resnet"),
    "torchvision_mobilenet_v2": ("mobilenetv2_",),
}
# torchvision's MobileNetV2 blocks features.1 ... features.17 by timm stage: (1, 2, 3, 4, 3, 3, 1) blocks.
_MNV2_STAGE_DEPTHS = (1, 2, 3, 4, 3, 3, 1)


@functools.cache
def _mobilenet_v2_names() -> dict[str, str]:
    """torchvision MobileNetV2 module prefix -> timm ``mobilenetv2_*`` module prefix (convs and BatchNorms)."""
    names = {"features.0.0": "conv_stem", "features.0.1": "bn1", "features.18.0": "conv_head",
             "features.18.1": "bn2", "classifier.1": "classifier"}  # fmt: skip
    index = 1
    for stage, depth in enumerate(_MNV2_STAGE_DEPTHS):
        for block in range(depth):
            tv, tm = f"features.{index}.conv", f"blocks.{stage}.{block}"
            if index == 1:  # expand ratio 1: depthwise conv + BN, pointwise-linear conv + BN
                names.update({f"{tv}.0.0": f"{tm}.conv_dw", f"{tv}.0.1": f"{tm}.bn1",
                              f"{tv}.1": f"{tm}.conv_pw", f"{tv}.2": f"{tm}.bn2"})  # fmt: skip
            else:  # expand conv + BN, depthwise conv + BN, pointwise-linear conv + BN
                names.update({f"{tv}.0.0": f"{tm}.conv_pw", f"{tv}.0.1": f"{tm}.bn1",
                              f"{tv}.1.0": f"{tm}.conv_dw", f"{tv}.1.1": f"{tm}.bn2",
                              f"{tv}.2": f"{tm}.conv_pwl", f"{tv}.3": f"{tm}.bn3"})  # fmt: skip
            index += 1
    return names


def _map_mobilenet_v2(key: str) -> str | None:
    prefix, _, suffix = key.rpartition(".")
    target = _mobilenet_v2_names().get(prefix)
    return None if target is None else f"{target}.{suffix}"


def _map_resnet(key: str) -> str | None:
    return key  # timm's ResNet keeps torchvision's names (conv1, bn1, layerN.i.convK, downsample.0/1, fc)


_MAPPERS: dict[str, Callable[[str], str | None]] = {
    "torchvision_resnet": _map_resnet,
    "torchvision_mobilenet_v2": _map_mobilenet_v2,
}


def torchvision_to_timm(state: dict[str, Tensor], layout: Layout, model_name: str) -> dict[str, Tensor]:
    """Rename a torchvision state dict of ``layout`` to timm's names for ``model_name``.

    Raises:
        WeightMappingError: ``model_name`` is not of the timm family the layout fits, or a tensor of the file has
            no timm name (the file is not the layout it looks like).
    """
    if layout not in _MAPPERS:
        raise WeightMappingError(f"no mapping for layout {layout!r}; known: {sorted(_MAPPERS)}")
    families = _FAMILIES[layout]
    if not model_name.startswith(families):
        raise WeightMappingError(
            f"the weight file is a {layout} checkpoint, which fits timm models named {families[0]}*; the "
            f"backbone is {model_name!r}"
        )
    mapper, out = _MAPPERS[layout], {}
    for key, value in state.items():
        name = mapper(key)
        if name is None:
            raise WeightMappingError(f"{layout} file: tensor {key!r} {tuple(value.shape)} has no timm name")
        out[name] = value
    return out


def load_into(model: nn.Module, state: dict[str, Tensor], model_name: str, source: str) -> nn.Module:
    """Copy ``state`` (timm names) into ``model`` (a timm model, e.g. ``features_only``), checking every tensor.

    Every parameter and buffer of ``model`` must be in ``state`` with the same shape; tensors of ``state`` the
    model lacks (classifier, the layers a feature extractor drops) are ignored. A 3-channel stem is adapted
    to a model built for other input channels as timm does (``adapt_input_conv``).

    Raises:
        WeightMappingError: naming the first tensor of the model missing from ``state`` or of another shape.
    """
    target = model.state_dict()
    loaded: dict[str, Tensor] = {}
    for name, tensor in target.items():
        if name not in state:
            raise WeightMappingError(
                f"{source}: no tensor for {model_name!r}'s {name!r} {tuple(tensor.shape)} in the file "
                f"(file tensors like {_sample(state)})"
            )
        value = state[name]
        if value.shape != tensor.shape and _is_stem(name, value, tensor):
            from timm.models._manipulate import adapt_input_conv

            value = adapt_input_conv(tensor.shape[1], value)
        if value.shape != tensor.shape:
            raise WeightMappingError(
                f"{source}: tensor {name!r} has shape {tuple(value.shape)} in the file but "
                f"{tuple(tensor.shape)} in {model_name!r} (is the file for another architecture or width?)"
            )
        loaded[name] = value.to(tensor.dtype)
    model.load_state_dict(loaded, strict=True)
    return model


def check_known_layout(model: nn.Module, state: dict[str, Tensor], model_name: str, source: str) -> None:
    """WeightMappingError unless at least one tensor name of ``model`` is in the file ``state``: timm loads a
    file non-strictly and would otherwise keep random weights for a file of an unknown layout, silently."""
    names = list(model.state_dict())
    if not any(name in state for name in names):
        raise WeightMappingError(
            f"{source}: unknown weight layout for {model_name!r}: none of its tensors (e.g. {names[0]!r}) is in "
            f"the file (file tensors like {_sample(state)}); pretrained=PATH takes timm checkpoints of the model "
            f"and torchvision state dicts of {', '.join(sorted(_MAPPERS))}"
        )


def _is_stem(name: str, value: Tensor, tensor: Tensor) -> bool:
    return re.fullmatch(r"(conv1|conv_stem)\.weight", name) is not None and value.shape[0] == tensor.shape[0]


def _sample(state: dict[str, Tensor], n: int = 3) -> str:
    return ", ".join(repr(k) for k in list(state)[:n])
