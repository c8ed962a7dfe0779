"""The engine protocol: what runs a detector's network on a batch of preprocessed images.

detforge's pre-processing (the validation letterbox, ``predict``'s resize) and post-processing (the model's
``postprocess``, mapping to original pixels) are shared by every engine: an engine only replaces the network
call. It takes images Tensor[B, C, H, W] (float in [0, 1], the real (h, w) of each in ``image_sizes``) and
returns what the model's ``postprocess`` takes (the raw outputs dict of ``forward``), or, for a graph that
ends in detections (exported with NMS, :attr:`Engine.returns_detections`), the detections themselves.
:func:`engine_detections` is the one code path from images to detections in input pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Protocol, get_args

import torch
from torch import Tensor, nn

__all__ = ["ENGINE_NAMES", "Engine", "EngineName", "engine_detections", "parse_engine_names"]

EngineName = Literal["torch", "onnxruntime"]
ENGINE_NAMES: tuple[str, ...] = get_args(EngineName)


class Engine(Protocol):
    """Runs a detector's network. ``name``: the engine's name (:data:`EngineName`); ``returns_detections``:
    whether a call returns detections (a graph with NMS) instead of raw outputs for ``postprocess``."""

    name: str
    returns_detections: bool

    def __call__(
        self, images: Tensor, image_sizes: Sequence[tuple[int, int]] | None = None
    ) -> dict[str, Any] | list[dict[str, Tensor]]:
        """``images`` Tensor[B, C, H, W] -> the model's raw outputs, or per image ``boxes`` (Tensor[K, 4] xyxy
        input pixels), ``scores`` (Tensor[K]), ``labels`` (Tensor[K] int64) when ``returns_detections``."""
        ...


@torch.no_grad()
def engine_detections(
    engine: Engine, model: nn.Module, images: Tensor, image_sizes: Sequence[tuple[int, int]]
) -> list[dict[str, Tensor]]:
    """Detections of ``images`` (Tensor[B, C, H, W], each (h, w) of ``image_sizes`` real) in input pixels:
    ``model.postprocess`` of the engine's raw outputs, or the engine's own detections."""
    outputs = engine(images, image_sizes)
    if engine.returns_detections:
        return outputs  # type: ignore[return-value]
    return model.postprocess(outputs, image_sizes)


def parse_engine_names(text: str, allow_several: bool = False) -> list[str]:
    """``--engine`` as a list of names (``"torch,onnxruntime"`` when ``allow_several``);
    :class:`~detforge.errors.InvalidValueError` naming the option for an unknown or repeated name."""
    from detforge.errors import InvalidValueError

    names = [n.strip() for n in str(text).split(",") if n.strip()]
    if not names or (len(names) > 1 and not allow_several):
        what = "a comma-separated list of" if allow_several else "one of"
        raise InvalidValueError(f"--engine {text!r}: give {what} {', '.join(ENGINE_NAMES)}")
    for name in names:
        if name not in ENGINE_NAMES:
            raise InvalidValueError(f"--engine {name!r}: unknown engine; engines: {', '.join(ENGINE_NAMES)}")
    if len(set(names)) != len(names):
        raise InvalidValueError(f"--engine {text!r}: an engine is named twice")
    return names
