"""The edge detectors' ONNX / INT8 names over the one exporter (``detforge.export``), and onnxruntime runners
for their video APIs.

Every graph is what the model's export hooks say (``Detector.export_inputs`` / ``export_raw``), with
BatchNorm folded, short names and shared initializers once:

- Nexus: input ``images`` [B, C, H, W]; outputs the head maps of P3..P5 (``cls_logits_p3``, ``bbox_pred_p3``,
  ``bbox_log_var_p3``, ``centerness_p3``, ...). The tracker state stays outside the graph (``NexusVideo``).
- Phantom: input ``images`` [B, C, H, W] with H and W any multiples of 4 (the sparse runner feeds crops);
  outputs ``face_cls`` [B, 1, H/4, W/4] and ``face_bbox`` [B, 4, H/4, W/4]. The cached maps and the tracker
  state stay outside the graph (``PhantomVideo``).
- NightVision: input ``images`` [B, C, H, W]; outputs ``cls_logits`` [B, A, C], ``boxes`` [B, A, 4] (decoded
  xyxy pixels), ``obj_logits`` [B, A, 1].

INT8 is ``detforge.export.quantize_int8``'s static quantization (QDQ, per-channel weights) calibrated on frames
the caller gives.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from detforge.export import compact_names, export_onnx, fold_batchnorm, quantize_int8

__all__ = [
    "compact_names",
    "export_edge_onnx",
    "fold_batchnorm",
    "ort_network",
    "ort_session",
    "quantize_edge_int8",
]


def export_edge_onnx(
    model: nn.Module, path: str | Path, input_size: tuple[int, int] | None = None, opset: int = 17
) -> Path:
    """``detforge.export.export_onnx`` of one edge model's raw graph at ``input_size`` (h, w) (default: the
    model's ``default_input_size``). A graph with one input gets a dynamic batch, and dynamic height and width
    where the model's raw outputs allow it (Phantom's crops, Nexus's maps); a graph with explicit state inputs
    (none of the edge models now) runs one frame at a time and stays static."""
    if not hasattr(model, "export_inputs"):
        raise TypeError(f"{type(model).__name__} is not a detforge Detector (no export hooks)")
    size = (int(input_size[0]), int(input_size[1])) if input_size else tuple(model.default_input_size)
    single_input = len(model.export_inputs(torch.zeros(1, model.in_chans, *size))) == 1
    dynamic = "auto" if single_input else None
    return export_onnx(model, path, image_size=size, opset_version=opset, dynamic_axes=dynamic)


def quantize_edge_int8(model_path: str | Path, out_path: str | Path, calibration: Iterable[Any]) -> Path:
    """``detforge.export.quantize_int8`` with static calibration: one item per run (an array for the first
    input, a sequence of arrays in the graph's input order, or a dict by input name)."""
    items = list(calibration)
    if not items:
        raise ValueError("quantize_edge_int8 needs at least one calibration input")
    return quantize_int8(model_path, out_path, items)


def ort_session(path: str | Path, threads: int = 2):
    """An onnxruntime CPU session with ``threads`` intra-op threads (sequential execution, every graph
    optimisation): :func:`detforge.engines.ort.ort_session`, as ``--engine onnxruntime`` runs."""
    from detforge.engines.ort import ort_session as engine_session

    return engine_session(path, threads)


def ort_network(session):
    """A network callable for ``PhantomVideo`` backed by an onnxruntime session of the Phantom graph."""
    name = session.get_inputs()[0].name

    def run(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cls, deltas = session.run(None, {name: x})
        return cls, deltas

    return run
