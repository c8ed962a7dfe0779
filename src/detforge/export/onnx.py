"""ONNX export of detforge detectors and an onnxruntime check of the file against PyTorch.

Every model says what its graph computes through the export hooks of
:class:`detforge.models.base.Detector`: ``export_onnx(model, "model.onnx")`` writes ``model.export_raw`` (the raw
head tensors); ``with_nms=True`` writes ``model.export_detections``: ``boxes`` [B, D, 4] xyxy pixels of the
input, ``scores`` [B, D], ``labels`` [B, D] (-1 past the count) and ``num_detections`` [B], with decoding,
per-level top-k and NMS (ONNX NonMaxSuppression) inside the graph. The graph's inputs are
``model.export_inputs(example)`` (``images``, plus explicit state for video models). ``metadata`` (str -> str)
goes into the file's ``metadata_props`` (:mod:`detforge.export.metadata`).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from detforge.export.compact import compact_names, fold_batchnorm
from detforge.export.registry import register_exporter

__all__ = [
    "NMS_OUTPUTS", "ExportGraph", "check_onnx", "export_onnx", "export_onnx_format", "padded_detections",
    "raw_outputs_on_grid",
]  # fmt: skip

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


def raw_outputs_on_grid(model: nn.Module, output_names: Sequence[str]) -> bool:
    """Whether ``model``'s raw graph (outputs ``output_names``) bakes the example's location grid in, so its
    height and width cannot be dynamic: the model's ``raw_outputs_on_grid`` attribute, else whether it
    returns decoded ``boxes``."""
    known = getattr(model, "raw_outputs_on_grid", None)
    return bool(known) if known is not None else "boxes" in output_names


def _auto_axes(input_names: Sequence[str], spatial: bool) -> dict[str, dict[int, str]]:
    """``dynamic_axes="auto"``: dynamic batch on every input, plus height and width when ``spatial``."""
    tags = ["" if i == 0 else f"{name}_" for i, name in enumerate(input_names)]
    axes = [{0: "batch", 2: f"{t}height", 3: f"{t}width"} if spatial else {0: "batch"} for t in tags]
    return dict(zip(input_names, axes, strict=True))


def padded_detections(model: nn.Module, outputs: dict[str, Any], images: Tensor) -> dict[str, Tensor]:
    """``Detector.export_detections`` of outputs a model already has (``images`` [B, C, H, W])."""
    from detforge.postprocess import detect_padded

    scores, boxes = model.decode(outputs)
    sizes = torch.tensor([list(images.shape[-2:])], device=images.device).expand(images.shape[0], 2)  # [B, 2]
    settings = {k: v for k, v in asdict(model.postprocess_settings).items() if k != "soft_nms_sigma"}
    settings["nms_method"] = "none" if settings["nms_method"] == "none" else "hard"  # no soft-NMS operator
    found = detect_padded(scores, boxes, model.level_sizes(outputs), sizes, **settings)
    return dict(zip(NMS_OUTPUTS, found, strict=True))


def _check_dynamic_axes(dynamic_axes: dict | None, has_grid: bool) -> None:
    """Graphs that decode boxes bake the example's location grid in: only their batch may be dynamic."""
    if has_grid and any(d in (2, 3, -1, -2) for d in (dynamic_axes or {}).get("images", {})):
        raise ValueError(
            "this graph decodes boxes on the example's feature grid, so its height and width cannot be "
            "dynamic: export at the size you will run it (dynamic batch is fine: {'images': {0: 'batch'}})"
        )


def _example_input(model: nn.Module, example: Tensor | None, image_size: tuple[int, int] | None) -> Tensor:
    if example is not None:
        return example
    h, w = image_size or getattr(model, "default_input_size", (320, 320))
    return torch.rand(1, getattr(model, "in_chans", 3), h, w, device=next(model.parameters()).device)


def _check_soft_nms(model: nn.Module, with_nms: bool) -> None:
    """Soft-NMS has no faithful ONNX form (its rounds depend on the data, and there is no operator): a graph
    with detections would silently run hard NMS, so a model set to soft-NMS is refused with the way out."""
    settings = getattr(model, "postprocess_settings", None)
    method = getattr(settings, "nms_method", "hard")
    if with_nms and method in ("gaussian", "linear"):
        raise ValueError(
            f"this model's nms_method is {method!r} (soft-NMS), which an ONNX graph cannot run faithfully: "
            "export with NMS in the graph after model.set_postprocess(nms_method='hard') (on the CLI: "
            "--model.nms_method hard at training, or a checkpoint trained with it), or export without NMS in "
            "the graph (with_nms=False / no --nms) and run detforge.postprocess.batched_soft_nms on its outputs"
        )


def export_onnx(
    model: nn.Module,
    save_path: str | os.PathLike,
    example_input: Tensor | None = None,
    opset_version: int = 17,
    dynamic_axes: dict[str, dict[int, str]] | Literal["auto"] | None = None,
    with_nms: bool = False,
    image_size: tuple[int, int] | None = None,
    fold_bn: bool = True,
    compact: bool = True,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Export ``model`` to ONNX at ``save_path`` and return the path.

    Args:
        model: a detforge detector; save_path: the ``.onnx`` file to write (parent folders are created).
        example_input: Tensor[B, C, H, W] traced through the model; default ``torch.rand(1, in_chans, h, w)``
            at ``image_size`` or the model's ``default_input_size``.
        opset_version: ONNX opset (>= 11 for NonMaxSuppression).
        dynamic_axes: as in ``torch.onnx.export``; input name ``images``. None: every shape is fixed to the
            example's. The batch axis may always be dynamic; height and width only for raw graphs without
            decoded boxes (:func:`raw_outputs_on_grid` False), since decoding fixes the location grid.
            ``"auto"``: dynamic batch on every input, and height / width too where they may be.
        with_nms: end the graph in detections (boxes, scores, labels, num_detections) instead of raw heads;
            ValueError when the model's ``nms_method`` is soft-NMS (``"gaussian"`` / ``"linear"``: no faithful
            ONNX form).
        image_size: (h, w) of the default example input.
        fold_bn, compact: export :func:`fold_batchnorm`'s copy; rewrite the file with :func:`compact_names`.
        metadata: str -> str entries for the file's ``metadata_props`` (:mod:`detforge.export.metadata`).
    """
    _check_soft_nms(model, with_nms)
    path = Path(save_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = _example_input(model, example_input, image_size)
    was_training = model.training
    model.eval()
    try:
        graph, inputs = _graph(fold_batchnorm(model) if fold_bn else model, example, with_nms)
        on_grid = with_nms or raw_outputs_on_grid(model, graph.output_names)
        if dynamic_axes == "auto":
            dynamic_axes = _auto_axes(graph.input_names, spatial=not on_grid)
        elif dynamic_axes is not None and not isinstance(dynamic_axes, dict):
            raise ValueError(f"dynamic_axes must be a dict, 'auto' or None, got {dynamic_axes!r}")
        _check_dynamic_axes(dynamic_axes, on_grid)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
            torch.onnx.export(
                graph, tuple(inputs.values()), str(path), input_names=graph.input_names,
                output_names=graph.output_names, opset_version=opset_version, dynamic_axes=dynamic_axes,
                do_constant_folding=True, dynamo=False,
            )  # fmt: skip
    finally:
        model.train(was_training)
    path = compact_names(path) if compact else path
    if metadata:
        from detforge.export.metadata import write_metadata

        write_metadata(path, metadata)
    return path


def _session(onnx_path: str | os.PathLike):
    import onnxruntime as ort

    return ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])


def check_onnx(model: nn.Module, onnx_path: str | os.PathLike, example_input: Tensor) -> float:
    """Largest absolute difference between onnxruntime's outputs for ``example_input`` (Tensor[B, C, H, W])
    and the PyTorch model's: raw head tensors element by element, or (for a ``with_nms`` file) the
    detections of each image as a set, so near-equal scores may come in either order."""
    session = _session(onnx_path)
    with_nms = [o.name for o in session.get_outputs()][: len(NMS_OUTPUTS)] == list(NMS_OUTPUTS)
    was_training = model.training
    model.eval()
    try:
        graph, inputs = _graph(model, example_input, with_nms)
        with torch.no_grad():
            expected = graph(*inputs.values())
    finally:
        model.train(was_training)
    feeds = {name: value.detach().cpu().numpy() for name, value in inputs.items()}
    got, names = session.run(graph.output_names, feeds), graph.output_names
    if with_nms:
        nms_part = _detection_set_distance([t.detach().cpu().numpy() for t in expected[:4]], got[:4])
        return max(nms_part, _max_abs_diff(names[4:], expected[4:], got[4:]))
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
    """Largest difference between two padded detection sets, robust to the order of near-equal scores: per
    image the Hausdorff distance of the (box, score, 1e3 * label) rows. Counts must agree."""
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


@register_exporter("onnx")
def export_onnx_format(
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
    """The ``onnx`` format (:class:`~detforge.export.registry.Exporter`): :func:`export_onnx` of ``model`` at
    ``example``'s size, ``dynamic`` as ``dynamic_axes="auto"``; ``calib_data`` is not used."""
    return export_onnx(
        model, out_path, example_input=example, opset_version=opset, with_nms=nms,
        dynamic_axes="auto" if dynamic else None, metadata=metadata,
    )  # fmt: skip
