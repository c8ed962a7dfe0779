"""Export of detforge detectors: ONNX (raw heads or detections with NMS in the graph), INT8, and a registry
of exporters by format name.

- :mod:`detforge.export.onnx`: :func:`export_onnx`, :func:`check_onnx` (onnxruntime against PyTorch);
- :mod:`detforge.export.int8`: :func:`quantize_int8` (static QDQ INT8 calibrated on real frames, or dynamic);
- :mod:`detforge.export.compact`: small files (:func:`fold_batchnorm`, :func:`compact_names`);
- :mod:`detforge.export.metadata`: what a file carries to be run by ``--engine onnxruntime``;
- :mod:`detforge.export.registry`: :func:`register_exporter`, :func:`get_exporter`, :func:`list_formats`
  (``detforge export --format NAME``).
"""

from detforge.export.compact import compact_names, fold_batchnorm
from detforge.export.int8 import QUANTIZED_OPS, quantize_int8
from detforge.export.metadata import detector_from_metadata, detector_metadata, read_metadata, write_metadata
from detforge.export.onnx import (
    NMS_OUTPUTS,
    ExportGraph,
    check_onnx,
    export_onnx,
    padded_detections,
    raw_outputs_on_grid,
)
from detforge.export.registry import Exporter, get_exporter, list_formats, register_exporter

__all__ = [
    "NMS_OUTPUTS", "QUANTIZED_OPS", "ExportGraph", "Exporter", "check_onnx", "compact_names",
    "detector_from_metadata", "detector_metadata", "export_onnx", "fold_batchnorm", "get_exporter",
    "list_formats", "padded_detections", "quantize_int8", "raw_outputs_on_grid", "read_metadata",
    "register_exporter", "write_metadata",
]  # fmt: skip
