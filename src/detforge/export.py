"""ONNX export of detforge detectors, an onnxruntime check, and INT8 quantisation.

Every model says what its graph computes through the export hooks of
:class:`detforge.models.base.Detector`: ``export_onnx(model, "model.onnx")`` writes ``model.export_raw`` (the raw
head tensors); ``with_nms=True`` writes ``model.export_detections``: ``boxes`` [B, D, 4] xyxy pixels of the
input, ``scores`` [B, D], ``labels`` [B, D] (-1 past the count) and ``num_detections`` [B], with decoding,
per-level top-k and NMS (ONNX NonMaxSuppression) inside the graph. The graph's inputs are
``model.export_inputs(example)`` (``images``, plus explicit state for video models).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["ExportGraph", "check_onnx", "export_onnx", "quantize_int8"]

NMS_OUTPUTS = ("boxes", "scores", "labels", "num_detections")


class ExportGraph(nn.Module):
    """What ``torch.onnx.export`` traces: the model's export hook (``export_raw`` or ``export_detections``)
    with named tensor inputs (``model.export_inputs``) and outputs in a fixed order (``output_names``)."""

    def __init__(self, model: nn.Module, input_names: Sequence[str], output_names: Sequence[str], nms: bool):
        super().__init__()
        self.model = model
        self.input_names = list(input_names)
        self.output_names = list(output_names)
        self.nms = nms

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        named = dict(zip(self.input_names, inputs, strict=True))
        outputs = self.model.export_detections(**named) if self.nms else self.model.export_raw(**named)
        return tuple(outputs[name] for name in self.output_names)


def _graph(model: nn.Module, example: Tensor, with_nms: bool) -> tuple[ExportGraph, dict[str, Tensor]]:
    """The traced module for ``model`` and the example's named inputs (``model.export_inputs``)."""
    for hook in ("export_inputs", "export_raw", "export_detections"):
        if not hasattr(model, hook):
            raise TypeError(
                f"{type(model).__name__} is not a detforge Detector (no {hook}); subclass "
                "detforge.models.base.Detector to export it"
            )
    inputs = model.export_inputs(example)
    with torch.no_grad():
        outputs = model.export_detections(**inputs) if with_nms else model.export_raw(**inputs)
    return ExportGraph(model, list(inputs), list(outputs), with_nms), inputs


def _check_dynamic_axes(dynamic_axes: dict | None, has_grid: bool) -> None:
    """Graphs that decode boxes bake the example's location grid in: only their batch may be dynamic."""
    spatial = [d for d in (dynamic_axes or {}).get("images", {}) if d in (2, 3, -1, -2)]
    if has_grid and spatial:
        raise ValueError(
            "this graph decodes boxes on the example's feature grid, so its height and width cannot be "
            "dynamic: export at the size you will run it (dynamic batch is fine: {'images': {0: 'batch'}})"
        )


def _example_input(
    model: nn.Module, example_input: Tensor | None, image_size: tuple[int, int] | None
) -> Tensor:
    if example_input is not None:
        return example_input
    h, w = image_size or getattr(model, "default_input_size", (320, 320))
    device = next(model.parameters()).device
    return torch.rand(1, getattr(model, "in_chans", 3), h, w, device=device)


def export_onnx(
    model: nn.Module,
    save_path: str | os.PathLike,
    example_input: Tensor | None = None,
    opset_version: int = 17,
    dynamic_axes: dict[str, dict[int, str]] | None = None,
    with_nms: bool = False,
    image_size: tuple[int, int] | None = None,
) -> Path:
    """Export ``model`` to ONNX at ``save_path`` and return the path.

    Args:
        model: a detforge detector (``forward(images) -> dict`` of raw outputs).
        save_path: where to write the ``.onnx`` file (parent folders are created).
        example_input: Tensor[B, C, H, W] traced through the model; default ``torch.rand(1, in_chans, h, w)``
            at ``image_size`` or the model's ``default_input_size``.
        opset_version: ONNX opset (>= 11 for NonMaxSuppression).
        dynamic_axes: as in ``torch.onnx.export``; input name ``images``. None: every shape is fixed to the
            example's. The batch axis may always be dynamic; height and width only for raw graphs without
            decoded boxes (FCOS raw heads), since decoding fixes the location grid to the example's H, W.
        with_nms: end the graph in detections (boxes, scores, labels, num_detections) instead of raw heads.
        image_size: (h, w) of the default example input.
    """
    path = Path(save_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = _example_input(model, example_input, image_size)
    was_training = model.training
    model.eval()
    try:
        graph, inputs = _graph(model, example, with_nms)
        _check_dynamic_axes(dynamic_axes, with_nms or "boxes" in graph.output_names)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
            torch.onnx.export(
                graph,
                tuple(inputs.values()),
                str(path),
                input_names=graph.input_names,
                output_names=graph.output_names,
                opset_version=opset_version,
                dynamic_axes=dynamic_axes,
                do_constant_folding=True,
                dynamo=False,
            )
    finally:
        model.train(was_training)
    return path


def _session(onnx_path: str | os.PathLike):
    import onnxruntime as ort

    return ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])


def check_onnx(model: nn.Module, onnx_path: str | os.PathLike, example_input: Tensor) -> float:
    """Largest absolute difference between onnxruntime's outputs for ``example_input`` (Tensor[B, C, H, W])
    and the PyTorch model's: raw head tensors element by element, or (for a ``with_nms`` file) the
    detections of each image as a set, so near-equal scores may come in either order."""
    session = _session(onnx_path)
    names = [o.name for o in session.get_outputs()]
    with_nms = names[: len(NMS_OUTPUTS)] == list(NMS_OUTPUTS)
    was_training = model.training
    model.eval()
    try:
        graph, inputs = _graph(model, example_input, with_nms)
        with torch.no_grad():
            expected = graph(*inputs.values())
    finally:
        model.train(was_training)
    feeds = {name: value.detach().cpu().numpy() for name, value in inputs.items()}
    got = session.run(graph.output_names, feeds)
    names = graph.output_names
    if with_nms:
        nms_part = _detection_set_distance([t.detach().cpu().numpy() for t in expected[:4]], got[:4])
        rest = _max_abs_diff(names[4:], expected[4:], got[4:])
        return max(nms_part, rest)
    return _max_abs_diff(names, expected, got)


def _max_abs_diff(names: Sequence[str], expected: Sequence[Tensor], got: Sequence[np.ndarray]) -> float:
    diff = 0.0
    for name, ours, theirs in zip(names, expected, got):
        ours = ours.detach().cpu().numpy()
        if ours.shape != theirs.shape:
            raise AssertionError(f"ONNX output {name!r} has shape {theirs.shape}, PyTorch {ours.shape}")
        if ours.size:
            diff = max(diff, float(np.abs(ours.astype(np.float64) - theirs.astype(np.float64)).max()))
    return diff


def _detection_set_distance(expected: list[np.ndarray], got: list[np.ndarray]) -> float:
    """Largest difference between two padded detection sets, robust to the order of near-equal scores.

    Per image, every detection (box, score, label) is paired with its closest one in the other set and back
    (a Hausdorff distance); a label mismatch counts as a difference of 1e3. Counts must agree.
    """
    exp_boxes, exp_scores, exp_labels, exp_counts = expected
    boxes, scores, labels, counts = got
    if not np.array_equal(exp_counts, counts):
        raise AssertionError(f"ONNX detection counts {counts.tolist()} != PyTorch {exp_counts.tolist()}")
    diff = 0.0
    for i, n in enumerate(counts.tolist()):
        if n == 0:
            continue
        a = np.concatenate([exp_boxes[i, :n], exp_scores[i, :n, None], 1e3 * exp_labels[i, :n, None]], 1)
        b = np.concatenate([boxes[i, :n], scores[i, :n, None], 1e3 * labels[i, :n, None]], 1)
        pair = np.abs(a.astype(np.float64)[:, None] - b.astype(np.float64)[None]).max(-1)  # [n, n]
        diff = max(diff, float(pair.min(1).max()), float(pair.min(0).max()))
    return diff


def quantize_int8(
    onnx_path: str | os.PathLike,
    out_path: str | os.PathLike,
    calibration_inputs: Sequence[np.ndarray | Tensor] | None = None,
    per_channel: bool = True,
) -> Path:
    """INT8 copy of an ONNX model with onnxruntime.quantization.

    Without ``calibration_inputs`` weights are quantised and activations are quantised on the fly
    (``quantize_dynamic``); with a few representative input batches (arrays or tensors [B, C, H, W]) both
    are quantised statically in QDQ format (``quantize_static``), usually faster on CPU.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not calibration_inputs:
        quantize_dynamic(str(onnx_path), str(out), weight_type=QuantType.QInt8, per_channel=per_channel)
        return out
    input_name = _session(onnx_path).get_inputs()[0].name
    batches = [
        np.asarray(x.detach().cpu().numpy() if isinstance(x, Tensor) else x) for x in calibration_inputs
    ]

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(batches)

        def get_next(self):
            batch = next(self._it, None)
            return None if batch is None else {input_name: batch.astype(np.float32)}

    quantize_static(
        str(onnx_path),
        str(out),
        _Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=per_channel,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    return out
