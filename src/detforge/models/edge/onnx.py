"""ONNX and INT8 export of the edge detectors, and onnxruntime runners for their video APIs.

Graphs (one frame each, BatchNorm folded into the convolutions):

- Nexus: inputs ``frame`` [1, C, H, W] and ``predicted_stem`` [1, 24, H/4, W/4] (the predictive-coding state,
  zeros on the first frame); outputs the head maps of P3..P5, ``surprise`` [1, 1, H/32, W/32]
  (``nexus.surprise_map``) and ``next_predicted_stem`` (the state for the next frame).
- Phantom: input ``frame`` [1, C, H, W] with H and W any multiples of 4 (the sparse runner feeds crops);
  outputs ``face_cls`` [1, 1, H/4, W/4] and ``face_bbox`` [1, 4, H/4, W/4]. The cached maps and the tracker
  state stay outside the graph (``PhantomVideo``).
- NightVision: input ``images`` [B, C, H, W]; outputs ``cls`` [B, A, C], ``boxes`` [B, A, 4] (decoded xyxy
  pixels), ``obj`` [B, A, 1].

INT8 is onnxruntime static quantization (QDQ, per-channel weights) calibrated on frames the caller gives.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from detforge.models.edge.common import ConvBNAct
from detforge.models.edge.nexus import surprise_map

__all__ = [
    "compact_names",
    "export_edge_onnx",
    "fold_batchnorm",
    "ort_network",
    "ort_session",
    "quantize_edge_int8",
]


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode with every ``ConvBNAct``'s BatchNorm folded into its conv."""
    model = copy.deepcopy(model).eval()
    for module in model.modules():
        if isinstance(module, ConvBNAct) and isinstance(module[1], nn.BatchNorm2d):
            module[0] = fuse_conv_bn_eval(module[0], module[1])
            module[1] = nn.Identity()
    return model


class _NexusFrameGraph(nn.Module):
    def __init__(self, nexus: nn.Module) -> None:
        super().__init__()
        self.nexus = nexus

    def forward(self, frame: Tensor, predicted_stem: Tensor) -> tuple[Tensor, ...]:
        stem = self.nexus.stem(frame)  # [1, 24, H/4, W/4]
        surprise = surprise_map(stem, predicted_stem)  # [1, 1, H/32, W/32]
        out = self.nexus.heads_from_stem(stem)
        maps = [t for k in ("cls_logits", "bbox_pred", "bbox_log_var", "centerness") for t in out[k]]
        return (*maps, surprise, self.nexus.predictor(stem))


class _PhantomGraph(nn.Module):
    def __init__(self, phantom: nn.Module) -> None:
        super().__init__()
        self.net = phantom.net

    def forward(self, frame: Tensor) -> tuple[Tensor, Tensor]:
        return self.net(frame)


class _NightVisionGraph(nn.Module):
    def __init__(self, nightvision: nn.Module) -> None:
        super().__init__()
        self.model = nightvision

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.model.forward_flat(images)


def _graph_and_io(model: nn.Module, size: tuple[int, int]):
    """The wrapper module, example inputs, input/output names and dynamic axes for ``model``."""
    from detforge.models.edge.nexus import Nexus
    from detforge.models.edge.nightvision import NightVision
    from detforge.models.edge.phantom import Phantom

    if not isinstance(model, Nexus | Phantom | NightVision):
        raise TypeError(
            f"export_edge_onnx takes a Nexus, Phantom or NightVision model, got {type(model).__name__}"
        )
    h, w = size
    c = model.in_chans
    if isinstance(model, Nexus):
        levels = ("p3", "p4", "p5")
        outputs = [
            f"{k}_{lv}" for k in ("cls_logits", "bbox_pred", "bbox_log_var", "centerness") for lv in levels
        ]
        state = torch.zeros(1, model.stem_channels, h // 4, w // 4)
        return (
            _NexusFrameGraph(model),
            (torch.rand(1, c, h, w), state),
            ["frame", "predicted_stem"],
            [*outputs, "surprise", "next_predicted_stem"],
            None,
        )
    if isinstance(model, Phantom):
        dyn = {
            "frame": {2: "height", 3: "width"},
            "face_cls": {2: "h4", 3: "w4"},
            "face_bbox": {2: "h4", 3: "w4"},
        }
        return _PhantomGraph(model), (torch.rand(1, c, h, w),), ["frame"], ["face_cls", "face_bbox"], dyn
    dyn = {"images": {0: "batch"}, "cls": {0: "batch"}, "boxes": {0: "batch"}, "obj": {0: "batch"}}
    return _NightVisionGraph(model), (torch.rand(1, c, h, w),), ["images"], ["cls", "boxes", "obj"], dyn


def export_edge_onnx(
    model: nn.Module, path: str | Path, input_size: tuple[int, int] | None = None, opset: int = 17
) -> Path:
    """Export one edge model's single-frame inference graph (see the module docstring) to ``path``.

    Args:
        model: a ``Nexus``, ``Phantom`` or ``NightVision``.
        input_size: (h, w) of the example input (default: the model's ``default_input_size``).

    Returns:
        The written path. Uses torch's TorchScript-based exporter, which exports these plain conv nets
        exactly and several times faster than the ``torch.export`` one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    size = tuple(input_size or model.default_input_size)
    graph, args, inputs, outputs, dynamic = _graph_and_io(fold_batchnorm(model), size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph.eval(),
            args,
            str(path),
            dynamo=False,
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=dynamic,
            opset_version=opset,
        )
    return compact_names(path)


def ort_session(path: str | Path, threads: int = 2):
    """An onnxruntime CPU session with ``threads`` intra-op threads (sequential execution)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort_network(session):
    """A network callable for ``PhantomVideo`` backed by an onnxruntime session of the Phantom graph."""
    name = session.get_inputs()[0].name

    def run(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cls, deltas = session.run(None, {name: x})
        return cls, deltas

    return run


def compact_names(
    path: str | Path, out_path: str | Path | None = None, prefix: str = "t", copy_shared: bool = False
) -> Path:
    """Rewrite an ONNX file with short tensor and node names and no doc strings (graph inputs and outputs
    keep theirs); on models this small the long module-path names are a large part of the file."""
    import onnx

    path = Path(path)
    model = onnx.load(str(path))
    graph = model.graph
    keep = {v.name for v in graph.input} | {v.name for v in graph.output}
    # shared layers (Nexus's head serves three levels) come out as Identity copies of one initializer;
    # point their consumers at the initializer itself (onnxruntime's quantizer expects conv weights there)
    initializers = {i.name for i in graph.initializer}
    alias = {
        n.output[0]: n.input[0]
        for n in graph.node
        if n.op_type == "Identity" and n.input[0] in initializers and n.output[0] not in keep
    }
    if alias:
        nodes = [n for n in graph.node if not (n.op_type == "Identity" and n.output[0] in alias)]
        del graph.node[:]
        graph.node.extend(nodes)
        if copy_shared:  # one initializer per consumer (what onnxruntime's quantizer handles)
            by_name = {i.name: i for i in graph.initializer}
            for copy_name, source in alias.items():
                duplicate = graph.initializer.add()
                duplicate.CopyFrom(by_name[source])
                duplicate.name = copy_name
        else:
            for node in graph.node:
                node.input[:] = [alias.get(n, n) for n in node.input]
    mapping: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        if name not in mapping:
            new = f"{prefix}{len(mapping):x}"
            while new in keep:  # never reuse a kept name (a second pass sees the first pass's names)
                new += "_"
            mapping[name] = new
        return mapping[name]

    if copy_shared:  # one initializer per consumer (what onnxruntime's quantizer handles)
        by_name = {i.name: i for i in graph.initializer}
        seen: set[str] = set()
        for k, node in enumerate(graph.node):
            for j, name in enumerate(node.input):
                if name in by_name and name in seen:
                    duplicate = graph.initializer.add()
                    duplicate.CopyFrom(by_name[name])
                    duplicate.name = f"{name}__copy{k}_{j}"
                    node.input[j] = duplicate.name
                seen.add(name)
    if not copy_shared:
        _merge_identical_initializers(graph)
    for init in graph.initializer:
        init.name = short(init.name)
    for i, node in enumerate(graph.node):
        node.name = f"n{i:x}"
        node.doc_string = ""
        node.input[:] = [short(n) for n in node.input]
        node.output[:] = [short(n) for n in node.output]
    del graph.value_info[:]  # intermediate shapes: onnxruntime infers them again
    model.doc_string = ""
    out_path = Path(out_path or path)
    onnx.save(model, str(out_path))
    return out_path


def _merge_identical_initializers(graph) -> int:
    """Keep one copy of byte-identical initializers and point every consumer at it; returns how many were
    dropped. onnxruntime's quantizer writes one quantised copy of a weight per consumer (Nexus's head serves
    three levels), and identical float weights quantise to identical bytes."""
    keep = {v.name for v in graph.input} | {v.name for v in graph.output}
    first: dict[tuple, str] = {}
    alias: dict[str, str] = {}
    unique = []
    for init in graph.initializer:
        key = (init.data_type, tuple(init.dims), _payload(init))
        if key in first and init.name not in keep:
            alias[init.name] = first[key]
        else:
            first.setdefault(key, init.name)
            unique.append(init)
    if not alias:
        return 0
    kept = [type(unique[0])() for _ in unique]
    for dst, src in zip(kept, unique, strict=True):
        dst.CopyFrom(src)
    del graph.initializer[:]
    graph.initializer.extend(kept)
    for node in graph.node:
        node.input[:] = [alias.get(n, n) for n in node.input]
    return len(alias)


def _payload(init) -> bytes:
    """The stored values of an initializer (raw bytes or the typed field), without its name."""
    from onnx import numpy_helper

    return numpy_helper.to_array(init).tobytes()


# the conv stacks and their activations; box decoding (Concat / Exp with constant grids) stays float
_QUANTIZED_OPS = ("Conv", "Relu", "Add", "Mul", "Sigmoid")


class _CalibrationReader:
    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._iter = iter(feeds)

    def get_next(self):
        return next(self._iter, None)

    def rewind(self) -> None:  # pragma: no cover - part of onnxruntime's reader protocol
        pass


def quantize_edge_int8(
    model_path: str | Path, out_path: str | Path, calibration: Iterable[Sequence[np.ndarray] | np.ndarray]
) -> Path:
    """Static INT8 quantization (QDQ, per-channel, uint8 activations / int8 weights) with onnxruntime.

    Args:
        model_path: a float32 graph from ``export_edge_onnx``.
        calibration: inputs for the graph, one item per run: an array for single-input graphs, or a sequence
            of arrays in the graph's input order (e.g. frame and predicted_stem for Nexus).
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model_path, out_path = Path(model_path), Path(out_path)
    names = [i.name for i in onnx.load(str(model_path), load_external_data=False).graph.input]
    feeds = []
    for item in calibration:
        arrays = [item] if isinstance(item, np.ndarray) else list(item)
        if len(arrays) != len(names):
            raise ValueError(f"calibration items need {len(names)} arrays ({names}), got {len(arrays)}")
        feeds.append({n: np.asarray(a, dtype=np.float32) for n, a in zip(names, arrays, strict=True)})
    if not feeds:
        raise ValueError("quantize_edge_int8 needs at least one calibration input")
    prepared = out_path.with_suffix(".prep.onnx")
    # onnxruntime's quantizer can mis-wire graphs whose tensor names look like the short ones
    # ``compact_names`` writes; give it long distinct names, and compact its result afterwards
    renamed = compact_names(
        model_path, out_path.with_suffix(".named.onnx"), prefix="edge_tensor_", copy_shared=True
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quant_pre_process(str(renamed), str(prepared), skip_optimization=True, skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(out_path),
            _CalibrationReader(feeds),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            op_types_to_quantize=list(_QUANTIZED_OPS),
        )
    prepared.unlink(missing_ok=True)
    renamed.unlink(missing_ok=True)
    return compact_names(out_path)
