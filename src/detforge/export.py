"""ONNX export of detforge detectors, an onnxruntime check, and INT8 quantisation.

Every model says what its graph computes through the export hooks of
:class:`detforge.models.base.Detector`: ``export_onnx(model, "model.onnx")`` writes ``model.export_raw`` (the raw
head tensors); ``with_nms=True`` writes ``model.export_detections``: ``boxes`` [B, D, 4] xyxy pixels of the
input, ``scores`` [B, D], ``labels`` [B, D] (-1 past the count) and ``num_detections`` [B], with decoding,
per-level top-k and NMS (ONNX NonMaxSuppression) inside the graph. The graph's inputs are
``model.export_inputs(example)`` (``images``, plus explicit state for video models).

Small files: BatchNorm folded into the convolutions (:func:`fold_batchnorm`), short names and one copy of
byte-identical initializers (:func:`compact_names`), static INT8 calibrated on real frames (:func:`quantize_int8`).
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = [
    "ExportGraph", "check_onnx", "compact_names", "export_onnx", "fold_batchnorm", "padded_detections",
    "quantize_int8", "raw_outputs_on_grid",
]  # fmt: skip

NMS_OUTPUTS = ("boxes", "scores", "labels", "num_detections")
# static INT8: the conv stacks and their activations; Concat / Exp of box decoding stay float
QUANTIZED_OPS = ("Conv", "Relu", "Add", "Mul", "Sigmoid")


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


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode with every ``BatchNorm2d`` that directly follows a ``Conv2d`` in an
    ``nn.Sequential`` folded into the conv (and replaced by ``Identity``). Norms with their own activation
    (timm's ``BatchNormAct2d``) and norms elsewhere stay as they are."""
    model = copy.deepcopy(model).eval()
    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module._modules.items())
        for (conv_name, conv), (bn_name, bn) in zip(children, children[1:]):
            pair = type(conv) is nn.Conv2d and type(bn) is nn.BatchNorm2d  # exact types: no BatchNormAct2d
            if pair and bn.track_running_stats and conv.out_channels == bn.num_features:
                module._modules[conv_name] = fuse_conv_bn_eval(conv, bn)
                module._modules[bn_name] = nn.Identity()
    return model


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
    return compact_names(path) if compact else path


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


def compact_names(
    path: str | os.PathLike,
    out_path: str | os.PathLike | None = None,
    prefix: str = "t",
    copy_shared: bool = False,
) -> Path:
    """Rewrite an ONNX file with short tensor and node names (graph inputs and outputs keep theirs), no doc
    strings or intermediate shapes, and byte-identical initializers once (``copy_shared``: once per consumer,
    what onnxruntime's quantizer expects); on small models the long names are a large part of the file."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    keep = {v.name for v in graph.input} | {v.name for v in graph.output}
    # a layer shared by levels comes out as Identity copies of one initializer or as identical initializers
    by_name = {i.name: i for i in graph.initializer}
    alias = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity" and n.input[0] in by_name}
    alias = {k: v for k, v in alias.items() if k not in keep}
    graph_nodes = [n for n in graph.node if not (n.op_type == "Identity" and n.output[0] in alias)]
    del graph.node[:]
    graph.node.extend(graph_nodes)  # copies: find the subgraphs after this
    subgraphs = _subgraphs(graph)  # If / Loop bodies (NMS) may name outer tensors: renamed alike
    if not copy_shared:
        first: dict[tuple, str] = {}
        for init in graph.initializer:
            key = (init.data_type, tuple(init.dims), numpy_helper.to_array(init).tobytes())
            alias[init.name] = first.setdefault(key, init.name) if init.name not in keep else init.name
        unique = [init for init in graph.initializer if alias[init.name] == init.name]
        kept = [onnx.TensorProto() for _ in unique]
        for dst, src in zip(kept, unique, strict=True):
            dst.CopyFrom(src)
        del graph.initializer[:]
        graph.initializer.extend(kept)
    alias = {k: alias.get(v, v) for k, v in alias.items()}  # an Identity of a merged initializer
    nodes = [*graph.node, *(n for sub in subgraphs for n in sub.node)]
    for node in nodes:
        node.input[:] = [alias.get(n, n) for n in node.input]
    if copy_shared:
        by_name, seen = {i.name: i for i in graph.initializer}, set()
        for k, node in enumerate(graph.node):
            for j, name in enumerate(node.input):
                if name in by_name and name in seen:
                    duplicate = graph.initializer.add()
                    duplicate.CopyFrom(by_name[name])
                    duplicate.name = node.input[j] = f"{name}__copy{k}_{j}"
                seen.add(name)
    mapping: dict[str, str] = {}

    def short(name: str) -> str:
        if name and name not in keep and name not in mapping:
            mapping[name] = f"{prefix}{len(mapping):x}"
            while mapping[name] in keep:  # never reuse a kept name (a second pass sees the first's names)
                mapping[name] += "_"
        return mapping.get(name, name)

    for value in (
        *graph.initializer,
        *(v for sub in subgraphs for v in (*sub.input, *sub.output, *sub.initializer)),
    ):
        value.name = short(value.name)
    for i, node in enumerate(nodes):
        node.name, node.doc_string = f"n{i:x}", ""
        node.input[:] = [short(n) for n in node.input]
        node.output[:] = [short(n) for n in node.output]
    for g in (graph, *subgraphs):
        del g.value_info[:]  # intermediate shapes: onnxruntime infers them again
    model.doc_string = ""
    out = Path(out_path or path)
    onnx.save(model, str(out))
    return out


def _subgraphs(graph) -> list:
    """Every subgraph (If branches, Loop bodies) inside ``graph``, recursively."""
    found = []
    for node in graph.node:
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                found += [sub, *_subgraphs(sub)]
    return found
