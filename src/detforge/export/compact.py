"""Small ONNX files: BatchNorm folded into the convolutions (:func:`fold_batchnorm`), short names and one copy
of byte-identical initializers (:func:`compact_names`)."""

from __future__ import annotations

import copy
import os
from pathlib import Path

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ["compact_names", "fold_batchnorm"]


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
