"""Exporters by format name: ``detforge export --format NAME`` looks the format up here.

An exporter is a function ``(model, out_path, *, example, nms, dynamic, opset, calib_data, metadata) -> Path``
(:class:`Exporter`) registered under its format name with :func:`register_exporter`::

    @register_exporter("onnx")
    def export_onnx_format(model, out_path, *, example, nms=False, dynamic=False, opset=17,
                           calib_data=None, metadata=None) -> Path: ...

The built-in formats (``onnx``, ``int8``) register themselves in :mod:`detforge.export.onnx` and
:mod:`detforge.export.int8`; :func:`list_formats` and :func:`get_exporter` import them first.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from torch import Tensor, nn

__all__ = ["Exporter", "get_exporter", "list_formats", "register_exporter"]


class Exporter(Protocol):
    """Writes ``model`` (a detforge ``Detector``) in one format and returns the main file written.

    Args:
        model: the bare detector (``ObjectDetector.model``), in eval mode.
        out_path: the file to write (parent folders are created).
        example: Tensor[B, C, H, W] traced through the model; its size is the graph's input size.
        nms: end the graph in detections (decoding and NMS inside) instead of raw head tensors.
        dynamic: dynamic batch, and height / width where the graph allows it.
        opset: ONNX opset version.
        calib_data: calibration items for quantizing formats (one run's inputs each, by input name), or None.
        metadata: str -> str entries stored in the file (:mod:`detforge.export.metadata`), or None.
    """

    def __call__(
        self,
        model: nn.Module,
        out_path: Path,
        *,
        example: Tensor,
        nms: bool = False,
        dynamic: bool = False,
        opset: int = 17,
        calib_data: Sequence[Any] | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> Path: ...


_EXPORTERS: dict[str, Exporter] = {}


def register_exporter(name: str) -> Callable[[Exporter], Exporter]:
    """Decorator registering an :class:`Exporter` under the format ``name``; a name taken by another
    function raises a ValueError."""

    def register(exporter: Exporter) -> Exporter:
        taken = _EXPORTERS.get(name)
        if taken is not None and _qualified(taken) != _qualified(
            exporter
        ):  # a module reload may register again
            raise ValueError(f"export format {name!r} is already registered ({taken.__qualname__})")
        _EXPORTERS[name] = exporter
        return exporter

    return register


def _qualified(function: Any) -> str:
    return f"{getattr(function, '__module__', '')}.{getattr(function, '__qualname__', repr(function))}"


def _load_builtins() -> None:
    import detforge.export.onnx  # noqa: F401, I001  (registers "onnx" first)
    import detforge.export.int8  # noqa: F401  (registers "int8")


def list_formats() -> tuple[str, ...]:
    """The registered format names, in registration order (``("onnx", "int8", ...)``)."""
    _load_builtins()
    return tuple(_EXPORTERS)


def get_exporter(name: str) -> Exporter:
    """The exporter of format ``name``; :class:`~detforge.errors.InvalidValueError` naming the known formats
    when there is none."""
    from detforge.errors import InvalidValueError

    formats = list_formats()
    if name not in _EXPORTERS:
        raise InvalidValueError(
            f"--format {name!r}: unknown export format; known formats: {', '.join(formats)}"
        )
    return _EXPORTERS[name]
