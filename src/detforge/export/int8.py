"""INT8 copies of ONNX files with onnxruntime's quantizer: static QDQ calibrated on real frames, or dynamic."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor, nn

from detforge.export.compact import compact_names
from detforge.export.onnx import export_onnx_format
from detforge.export.registry import register_exporter

__all__ = ["QUANTIZED_OPS", "export_int8_format", "quantize_int8"]

# static INT8: the conv stacks and their activations; Concat / Exp of box decoding stay float
QUANTIZED_OPS = ("Conv", "Relu", "Add", "Mul", "Sigmoid")


def quantize_int8(
    onnx_path: str | os.PathLike,
    out_path: str | os.PathLike,
    calibration_inputs: Sequence[Any] | None = None,
    per_channel: bool = True,
) -> Path:
    """INT8 copy of an ONNX model with onnxruntime.quantization.

    Without ``calibration_inputs`` weights are quantised and activations on the fly (``quantize_dynamic``).
    With representative inputs, weights (int8, per channel) and activations (uint8) are quantised statically
    in QDQ format (``quantize_static``, MinMax ranges, ops :data:`QUANTIZED_OPS`): smaller and faster on CPU.
    Each calibration item is one run's inputs: a dict by input name (``model.export_inputs(frame)``), a
    sequence of arrays in input order, or one array / tensor [B, C, H, W] for the first input (the others,
    e.g. a video model's state, get zeros of their static shape). The result goes through :func:`compact_names`.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not calibration_inputs:
        quantize_dynamic(str(onnx_path), str(out), weight_type=QuantType.QInt8, per_channel=per_channel)
        return out
    graph_inputs = onnx.load(str(onnx_path), load_external_data=False).graph.input
    feeds = iter([_calibration_feed(item, graph_inputs) for item in calibration_inputs])
    reader = type(
        "CalibrationReader", (), {"get_next": lambda self: next(feeds, None), "rewind": lambda self: None}
    )
    prepared, renamed = out.with_suffix(".prep.onnx"), out.with_suffix(".named.onnx")
    # onnxruntime's quantizer can mis-wire graphs whose tensor names look like the short ones compact_names
    # writes: give it long distinct names and one initializer per consumer, compact its result afterwards
    compact_names(onnx_path, renamed, prefix="quant_tensor_", copy_shared=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quant_pre_process(str(renamed), str(prepared), skip_optimization=True, skip_symbolic_shape=True)
            quantize_static(
                str(prepared), str(out), reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax, op_types_to_quantize=list(QUANTIZED_OPS),
            )  # fmt: skip
    finally:
        prepared.unlink(missing_ok=True)
        renamed.unlink(missing_ok=True)
    return compact_names(out)


def _calibration_feed(item: Any, graph_inputs) -> dict[str, np.ndarray]:
    """One calibration item (see :func:`quantize_int8`) as onnxruntime feeds by input name."""
    names = [i.name for i in graph_inputs]
    if isinstance(item, Mapping):
        if missing := sorted(set(names) - set(item)):
            raise ValueError(f"calibration item lacks the graph inputs {missing}")
        values = [item[name] for name in names]
    elif isinstance(item, list | tuple):
        if len(item) != len(names):
            raise ValueError(f"calibration items need {len(names)} arrays ({names}), got {len(item)}")
        values = list(item)
    else:
        values = [item]
        for graph_input in graph_inputs[1:]:
            dims = [
                d.dim_value if d.HasField("dim_value") else -1 for d in graph_input.type.tensor_type.shape.dim
            ]
            if -1 in dims:
                raise ValueError(
                    f"graph input {graph_input.name!r} has a dynamic shape: give it in the items"
                )
            values.append(np.zeros(dims, np.float32))
    values = [v.detach().cpu().numpy() if isinstance(v, Tensor) else v for v in values]
    return {name: np.ascontiguousarray(v, dtype=np.float32) for name, v in zip(names, values, strict=True)}


@register_exporter("int8")
def export_int8_format(
    model: nn.Module,
    out_path: Path,
    *,
    example: Tensor,
    nms: bool = False,
    dynamic: bool = False,
    opset: int = 17,
    calib_data: Sequence[Any] | None = None,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """The ``int8`` format (:class:`~detforge.export.registry.Exporter`): the float graph at ``out_path``
    (the ``onnx`` format) and its :func:`quantize_int8` copy beside it (``<stem>.int8.onnx``, returned):
    static QDQ calibrated on ``calib_data``, or dynamic quantization when it is empty or None."""
    float_path = export_onnx_format(
        model, out_path, example=example, nms=nms, dynamic=dynamic, opset=opset, metadata=metadata
    )
    quantized = quantize_int8(float_path, Path(float_path).with_suffix(".int8.onnx"), calib_data)
    if metadata:
        from detforge.export.metadata import write_metadata

        write_metadata(quantized, metadata)
    return quantized
