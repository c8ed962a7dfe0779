"""The ``openvino`` export format: the raw (or ``--nms``) ONNX graph converted to an OpenVINO IR.

:func:`export_openvino` writes the graph with the ``onnx`` exporter into a temporary folder, converts it with
``openvino.convert_model`` and saves ``model.xml`` + ``model.bin`` (``precision="fp16"``: weights compressed
to float16, computed in float32). detforge's metadata (:mod:`detforge.export.metadata`, the same entries an
``.onnx`` file carries) goes into the IR's runtime info under ``detforge``, so ``--weights model.xml --engine
openvino`` runs the file alone (:func:`read_openvino_metadata`).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from torch import Tensor, nn

from detforge.export.registry import register_exporter

__all__ = ["OPENVINO_PRECISIONS", "export_openvino", "export_openvino_format", "read_openvino_metadata"]

OPENVINO_PRECISIONS = ("fp32", "fp16")
RT_INFO_KEY = "detforge"


def export_openvino(
    model: nn.Module,
    out_path: str | os.PathLike,
    *,
    example: Tensor,
    nms: bool = False,
    dynamic: bool = True,
    opset: int = 17,
    metadata: Mapping[str, str] | None = None,
    precision: Literal["fp32", "fp16"] = "fp32",
) -> Path:
    """Write ``model`` as an OpenVINO IR at ``out_path`` (``.xml``; its ``.bin`` beside it) and return the path.

    Args:
        model: a detforge detector; example: Tensor[B, C, H, W] traced through it (the graph's input size).
        nms: end the graph in detections instead of raw head tensors.
        dynamic: dynamic batch (and height / width where the raw graph allows it), as the ``onnx`` format.
        opset: the intermediate ONNX graph's opset.
        metadata: str -> str entries stored in the IR's runtime info (:mod:`detforge.export.metadata`).
        precision: ``"fp32"``, or ``"fp16"`` for weights compressed to float16.
    """
    import openvino as ov

    from detforge.errors import InvalidValueError
    from detforge.export.onnx import export_onnx_format

    if precision not in OPENVINO_PRECISIONS:
        raise InvalidValueError(f"precision {precision!r}: give one of {', '.join(OPENVINO_PRECISIONS)}")
    path = Path(out_path)
    if path.suffix.lower() != ".xml":
        raise InvalidValueError(f"{path}: an OpenVINO IR is a .xml file (its weights in the .bin beside it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="detforge_openvino_") as tmp:
        onnx_path = export_onnx_format(
            model, Path(tmp) / "model.onnx", example=example, nms=nms, dynamic=dynamic, opset=opset
        )
        converted = ov.convert_model(str(onnx_path))
    for key, value in (metadata or {}).items():
        converted.set_rt_info(str(value), [RT_INFO_KEY, str(key)])
    ov.save_model(converted, str(path), compress_to_fp16=precision == "fp16")
    return path


def read_openvino_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The detforge entries in the runtime info of the OpenVINO IR at ``path`` ({} when it has none)."""
    import openvino as ov

    model = ov.Core().read_model(str(path))
    if not model.has_rt_info([RT_INFO_KEY]):
        return {}
    return {str(key): value.astype(str) for key, value in model.get_rt_info()[RT_INFO_KEY].items()}


@register_exporter("openvino")
def export_openvino_format(
    model: nn.Module,
    out_path: Path,
    *,
    example: Tensor,
    nms: bool = False,
    dynamic: bool = False,
    opset: int = 17,
    calib_data: Sequence[Any] | None = None,
    metadata: Mapping[str, str] | None = None,
    precision: Literal["fp32", "fp16"] = "fp32",
) -> Path:
    """The ``openvino`` format (:class:`~detforge.export.registry.Exporter`): :func:`export_openvino`;
    ``calib_data`` is not used."""
    return export_openvino(
        model, out_path, example=example, nms=nms, dynamic=dynamic, opset=opset, metadata=metadata,
        precision=precision,
    )  # fmt: skip
