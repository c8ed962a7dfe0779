"""ONNX export of detforge detectors, an onnxruntime check, and INT8 quantisation.

``export_onnx(model, "model.onnx")`` writes the raw head tensors (the model's ``forward`` outputs);
``with_nms=True`` writes a graph that ends in detections: ``boxes`` [B, D, 4] xyxy pixels of the input,
``scores`` [B, D], ``labels`` [B, D] (-1 past the count) and ``num_detections`` [B], with decoding, per-level
top-k and NMS (ONNX NonMaxSuppression) inside the graph. The model needs ``decode(outputs) -> (scores
[B, P, C], boxes [B, P, 4])`` for ``with_nms`` (FCOS and YOLOX have it).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from detforge.postprocess import detect_padded

__all__ = ["DetectionGraph", "RawGraph", "check_onnx", "export_onnx", "quantize_int8"]

NMS_OUTPUTS = ("boxes", "scores", "labels", "num_detections")


class RawGraph(nn.Module):
    """``model.forward`` with only its tensor outputs, in a fixed order (``output_names``)."""

    def __init__(self, model: nn.Module, output_names: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.output_names = list(output_names)

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        outputs = self.model(images)
        return tuple(outputs[name] for name in self.output_names)


class DetectionGraph(nn.Module):
    """Images -> fixed-size detections: ``forward(images Tensor[B, C, H, W])`` returns boxes [B, D, 4],
    scores [B, D], labels [B, D] and num_detections [B] (see :func:`detforge.postprocess.detect_padded`),
    with the model's score threshold, NMS threshold, per-level top-k and D = max detections per image."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if not hasattr(model, "decode"):
            raise TypeError(f"{type(model).__name__} has no decode(outputs); export it with with_nms=False")
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        outputs = self.model(images)
        scores, boxes = self.model.decode(outputs)  # [B, P, C], [B, P, 4]
        h, w = images.shape[-2:]
        sizes = torch.tensor([[h, w]], device=images.device).expand(images.shape[0], 2)  # [B, 2]
        return detect_padded(
            scores,
            boxes,
            [fh * fw for fh, fw in outputs["feat_sizes"]],
            sizes,
            score_thresh=self.model.score_thresh,
            nms_thresh=self.model.nms_thresh,
            pre_nms_topk=self.model.pre_nms_topk,
            max_detections=self.model.max_detections_per_image,
        )


def _tensor_output_names(model: nn.Module, example: Tensor) -> list[str]:
    with torch.no_grad():
        outputs = model(example)
    return [k for k, v in outputs.items() if isinstance(v, Tensor)]


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
        if with_nms:
            graph: nn.Module = DetectionGraph(model)
            output_names = list(NMS_OUTPUTS)
        else:
            output_names = _tensor_output_names(model, example)
            graph = RawGraph(model, output_names)
        _check_dynamic_axes(dynamic_axes, with_nms or "boxes" in output_names)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
            torch.onnx.export(
                graph,
                (example,),
                str(path),
                input_names=["images"],
                output_names=output_names,
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
    was_training = model.training
    model.eval()
    try:
        graph = DetectionGraph(model) if names == list(NMS_OUTPUTS) else RawGraph(model, names)
        with torch.no_grad():
            expected = graph(example_input)
    finally:
        model.train(was_training)
    got = session.run(names, {session.get_inputs()[0].name: example_input.detach().cpu().numpy()})
    if names == list(NMS_OUTPUTS):
        return _detection_set_distance([t.detach().cpu().numpy() for t in expected], got)
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
