"""Named pretrained weights as registry metadata (timm's ``pretrained_cfg``, torchvision's ``WeightsEnum``).

A registered model may carry named weights (``register_weights("fcos_resnet50_fpn", "coco", Weights(...))``):
where the file comes from and its hash, the class names and the checkpoint's category id of each, the input
pre-processing the weights were trained with, the licence, the published metrics, the fine-tuning recipe and
the converter from the file's layout (torchvision's, transformers') to the detforge model's state dict.
:func:`detforge.models.registry.create_model` with ``weights="coco"`` (a tag) or ``weights=PATH`` (a local file
in the layout of the model's weights) is the one construction path that loads them.

Files: a URL is downloaded into torch hub's checkpoint folder (``torch.hub.get_dir()/checkpoints``) and its
SHA-256 checked against the registered prefix. Offline with no cached file, :class:`WeightsUnavailableError`
says in one line which URL to fetch and the exact path to put it at. A file whose tensors do not fit raises
:class:`~detforge.models.pretrained.WeightMappingError` naming the first tensor that does not fit.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from detforge.errors import InvalidValueError, UserError
from detforge.models.preprocess import Preprocess
from detforge.models.pretrained import WeightMappingError, load_state_dict_file

__all__ = [
    "Weights",
    "WeightsUnavailableError",
    "cached_path",
    "get_weights",
    "list_weights",
    "load_weights",
    "register_weights",
    "resolve_file",
]

StateConverter = Callable[[dict[str, Tensor]], dict[str, Tensor]]


class WeightsUnavailableError(UserError, RuntimeError):
    """A weight file is not on this machine and cannot be downloaded (offline, or the hash does not match).
    ``detforge`` prints it as one line and exits with 1."""

    exit_status = 1


@dataclass(frozen=True, kw_only=True)
class Weights:
    """Metadata of one named weight file of a registered model.

    Attributes:
        url: where the file comes from (an https URL, downloaded into torch hub's cache).
        sha256: the file's SHA-256, or its first hex digits (torch hub's file-name hash prefix).
        class_names: the classes of the model's contiguous labels 0..C-1.
        category_ids: the checkpoint's category id of each class (COCO ids for COCO weights), for writing
            results back in the data set's ids; None: the label itself.
        preprocess: the resize, normalisation and padding the weights were trained with.
        licence: the weights' licence (SPDX id or short text).
        metrics: published metrics, e.g. ``{"coco/box_ap": 39.2}`` (percent).
        convert: the file's state dict (its own names) -> the detforge model's state dict; None: same names.
        model_kwargs: builder arguments the weights need (class count, post-processing the source uses).
        recipe: the fine-tuning recipe from these weights: dotted ``detforge train`` overrides
            (``{"model.optimizer": "sgd", "model.lr": 0.005, ...}``), applied unless the command line sets them.
        source: where the weights were trained / published (``"torchvision"``, ``"huggingface"``).
        num_params: parameters of the model built for these weights (for the model zoo table).
    """

    url: str
    sha256: str | None = None
    class_names: tuple[str, ...]
    category_ids: tuple[int, ...] | None = None
    preprocess: Preprocess = field(default_factory=Preprocess)
    licence: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    convert: StateConverter | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    recipe: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    num_params: int | None = None

    def __post_init__(self) -> None:
        if self.category_ids is not None and len(self.category_ids) != len(self.class_names):
            raise ValueError(
                f"category_ids has {len(self.category_ids)} entries for {len(self.class_names)} class names"
            )

    @property
    def file_name(self) -> str:
        """The file's name in the cache (the URL's last part)."""
        return self.url.rstrip("/").rsplit("/", 1)[-1]


_WEIGHTS: dict[str, dict[str, Weights]] = {}


def register_weights(model_name: str, tag: str, weights: Weights) -> Weights:
    """Register ``weights`` as ``model_name``'s weights named ``tag`` (e.g. "coco"); duplicates raise."""
    tags = _WEIGHTS.setdefault(model_name, {})
    if tag in tags:
        raise ValueError(f"model {model_name!r} already has weights {tag!r}")
    tags[tag] = weights
    return weights


def list_weights(model_name: str | None = None) -> list[tuple[str, str]]:
    """Sorted (model name, tag) pairs of the registered weights (of one model when ``model_name`` is given)."""
    from detforge.models.registry import _load_builtin

    _load_builtin()
    return sorted(
        (name, tag) for name, tags in _WEIGHTS.items() for tag in tags if model_name in (None, name)
    )


def get_weights(model_name: str, tag: str) -> Weights:
    """The weights ``tag`` of ``model_name``; ValueError naming the tags it has otherwise."""
    from detforge.models.registry import _load_builtin

    _load_builtin()
    tags = _WEIGHTS.get(model_name, {})
    if tag not in tags:
        have = ", ".join(sorted(tags)) or "none"
        raise InvalidValueError(f"model {model_name!r} has no weights {tag!r} (registered weights: {have})")
    return tags[tag]


def is_weights_tag(model_name: str, weights: str) -> bool:
    """Whether ``weights`` names registered weights of ``model_name`` (rather than a file path)."""
    from detforge.models.registry import _load_builtin

    _load_builtin()
    return weights in _WEIGHTS.get(model_name, {})


def cached_path(weights: Weights) -> Path:
    """Where torch hub keeps (or would keep) the file of ``weights``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / weights.file_name


def _check_hash(path: Path, expected: str | None) -> None:
    if not expected:
        return
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    if not digest.hexdigest().startswith(expected.lower()):
        raise WeightsUnavailableError(
            f"{path}: SHA-256 {digest.hexdigest()[:16]}... does not match the registered {expected}...; "
            "delete the file and download it again"
        )


def resolve_file(weights: Weights, *, download: bool = True) -> Path:
    """The local file of ``weights``: the cached one (hash checked), else downloaded into the cache (torch
    hub) when ``download``; offline: :class:`WeightsUnavailableError` naming the URL and the path."""
    path = cached_path(weights)
    if path.is_file():
        _check_hash(path, weights.sha256)
        return path
    if download and os.environ.get("DETFORGE_OFFLINE", "0") != "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(weights.url, str(path), hash_prefix=None, progress=True)
        except Exception as err:  # noqa: BLE001 - any network failure reads the same to the user
            path.unlink(missing_ok=True)
            raise WeightsUnavailableError(
                f"could not download {weights.url} ({type(err).__name__}); offline, download it elsewhere and "
                f"put it at {path}"
            ) from None
        _check_hash(path, weights.sha256)
        return path
    raise WeightsUnavailableError(f"weights not cached: download {weights.url} and put it at {path}")


def copy_class_rows(
    target: Tensor, source: Tensor, layout: tuple[int, int, int], mapping: list[int | None]
) -> Tensor:
    """``target`` (a class layer's tensor for the new classes) with the rows of the classes ``mapping`` finds
    in the weights copied from ``source`` (the same layer for the weights' classes).

    ``layout`` = (groups, background, rows per class): dim 0 of the tensor is ``groups`` blocks (anchors per
    location) of ``background + num_classes`` classes (a softmax head's background first) of ``rows per
    class`` rows each (4 for class-specific box deltas). ``mapping[i]``: the weights' class of new class i,
    or None (a new class: its rows stay as initialised). The background rows are copied too."""
    groups, background, per = layout
    n_src, n_dst = len(source) // (groups * per) - background, len(mapping)
    if len(target) != groups * (n_dst + background) * per or len(source) != groups * (n_src + background) * per:
        raise ValueError(f"class layout {layout} does not fit tensors of {len(source)} and {len(target)} rows")
    src = source.reshape(groups, n_src + background, per, *source.shape[1:])
    out = target.clone().reshape(groups, n_dst + background, per, *target.shape[1:])
    if background:
        out[:, :background] = src[:, :background]
    for i, j in enumerate(mapping):
        if j is not None:
            out[:, background + i] = src[:, background + j]
    return out.reshape(target.shape)


def load_weights(
    model: nn.Module,
    weights: Weights,
    path: str | os.PathLike | None = None,
    *,
    strict_classes: bool = True,
    keep_classes: list[str] | None = None,
) -> nn.Module:
    """Load the file of ``weights`` (``path``, else the cached or downloaded file) into ``model``, converted
    to detforge's names; every tensor of the model must be in the file with the same shape, or a
    :class:`WeightMappingError` names the first one that is not. Sets the model's pre-processing and class
    names from the metadata. ``strict_classes=False`` skips the class layer's tensors whose shapes differ
    (a model built for other classes: fine-tuning) and returns them in ``model.reinitialized``;
    ``keep_classes`` (the new classes' names) then copies the rows of every new class whose name is one of the
    weights' (case-insensitive) from the weights' class layers (the model's ``class_layers()``), listed in
    ``model.kept_classes``."""
    file = Path(path) if path is not None else resolve_file(weights)
    if not file.is_file():
        raise FileNotFoundError(f"weight file not found: {file}")
    try:
        state = load_state_dict_file(file)
    except WeightMappingError:
        raise
    except Exception as err:  # noqa: BLE001 - a truncated or foreign file: one line naming it
        raise WeightMappingError(f"{file}: not a readable weight file ({type(err).__name__}: {err})") from None
    if weights.convert is not None:
        try:
            state = weights.convert(state)
        except KeyError as err:
            raise WeightMappingError(f"{file}: tensor {err.args[0]!r} the model needs is missing") from None
    own = model.state_dict()
    source_state = dict(state)
    skipped: list[str] = []
    for key, tensor in own.items():
        if key.endswith("num_batches_tracked"):
            state.setdefault(key, tensor)
            continue
        if key not in state:
            raise WeightMappingError(f"{file}: tensor {key!r} of {type(model).__name__} is missing from the file")
        if tuple(state[key].shape) != tuple(tensor.shape):
            if not strict_classes:
                skipped.append(key)
                state[key] = tensor
                continue
            raise WeightMappingError(
                f"{file}: tensor {key!r} has shape {tuple(state[key].shape)} in the file, "
                f"{tuple(tensor.shape)} in the model"
            )
    unexpected = sorted(set(state) - set(own))
    if unexpected:
        raise WeightMappingError(f"{file}: tensor {unexpected[0]!r} in the file has no place in the model")
    kept: list[str] = []
    if keep_classes is not None and skipped:
        layers = model.class_layers() if hasattr(model, "class_layers") else {}
        if not layers:
            raise ValueError(f"{type(model).__name__} does not say where its class layers are: keep_classes cannot copy rows")
        index = {name.lower(): i for i, name in enumerate(weights.class_names)}
        mapping = [index.get(name.lower()) for name in keep_classes]
        kept = [name for name, j in zip(keep_classes, mapping, strict=True) if j is not None]
        for key in skipped:
            if key in layers:
                state[key] = copy_class_rows(own[key], source_state[key], layers[key], mapping)
    model.load_state_dict(state)
    model.kept_classes = kept
    if "_preprocess" not in model.__dict__:  # a builder that set its own (min_size=...) keeps it
        model.preprocess = weights.preprocess
    model.reinitialized = skipped
    return model
