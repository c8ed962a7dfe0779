"""COCO accuracy of an edge detector in PyTorch eager, onnxruntime float32 and onnxruntime INT8.

The exported graphs (``detforge.models.edge.onnx``) return raw head tensors. ``graph_outputs_to_forward`` turns
them back into the dict the model's ``forward`` returns, so all three backends go through the model's own
``postprocess``, the same mapping to original image sizes and the same ``DetectionMAP``: the rows differ only
in the network's numerics. INT8 is ``quantize_edge_int8`` calibrated on training images.

``edge_accuracy(ckpt, data, work_dir)`` does it all for one ``detforge train`` checkpoint;
``benchmarks/edge_accuracy.py`` prints the table for several models.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from detforge.models.edge.common import level_points

__all__ = [
    "BACKENDS",
    "EdgeAccuracyRow",
    "OrtDetectorNetwork",
    "calibration_frames",
    "edge_accuracy",
    "evaluate_networks",
    "graph_feeds",
    "graph_outputs_to_forward",
    "nightvision_levels_from_flat",
]

BACKENDS = ("pytorch", "onnx_fp32", "onnx_int8")
# Network: images Tensor[B, C, H, W] float in [0, 1] -> the model's raw ``forward`` outputs
Network = Callable[[Tensor], dict[str, Any]]


@dataclass(frozen=True)
class EdgeAccuracyRow:
    """One backend of one model: COCO mAP@[.5:.95] and mAP@.5 (fractions), and the weights' size in bytes
    (the ONNX file, or for ``pytorch`` the serialized float32 state dict of the bare model)."""

    model: str
    backend: str
    map: float
    map_50: float
    size_bytes: int
    path: str | None = None


def nightvision_levels_from_flat(
    model: nn.Module, cls: Tensor, boxes: Tensor, obj: Tensor, input_size: tuple[int, int]
) -> dict[str, Any]:
    """NightVision's graph outputs back to ``forward``'s per-level maps.

    Args:
        model: the ``NightVision`` the graph was exported from (its ``strides``).
        cls: Tensor[B, A, C] class logits; boxes: Tensor[B, A, 4] decoded xyxy pixels; obj: Tensor[B, A, 1]
            objectness logits; A = all levels' cells, row-major inside a level (what ``forward_flat`` returns).
        input_size: (h, w) of the graph's input image.

    Returns:
        ``cls_logits`` / ``bbox_pred`` / ``obj_logits``: lists over the levels of Tensor[B, C | 4 | 1, H_l, W_l],
        ``bbox_pred`` re-encoded as YOLOX's (dx, dy, log w, log h) in stride units (the inverse of
        ``centre = point + d * stride, size = exp(log size) * stride``).
    """
    strides = list(model.strides)
    feat_sizes = _feature_sizes(strides, input_size, cls.shape[1])
    points, point_strides = level_points(feat_sizes, strides, device=boxes.device)  # [A, 2], [A]
    s = point_strides[None, :, None]  # [1, A, 1]
    centre = (boxes[..., :2] + boxes[..., 2:]) / 2  # [B, A, 2]
    size = (boxes[..., 2:] - boxes[..., :2]).clamp_min(1e-6)  # [B, A, 2]; INT8 rounding can flip a corner
    raw = torch.cat([(centre - points[None]) / s, (size / s).log()], dim=-1)  # [B, A, 4]
    out: dict[str, Any] = {"cls_logits": [], "bbox_pred": [], "obj_logits": []}
    start = 0
    for h, w in feat_sizes:
        end = start + h * w
        for key, flat in (("cls_logits", cls), ("bbox_pred", raw), ("obj_logits", obj)):
            level = flat[:, start:end].transpose(1, 2)  # [B, K, h * w]
            out[key].append(level.reshape(level.shape[0], level.shape[1], h, w))  # [B, K, h, w]
        start = end
    if getattr(model, "domain_head", None) is not None:
        # the graph has no domain head; postprocess only copies its argmax into a ``domain`` field
        from detforge.models.edge.nightvision import ThermalDomain

        out["domain_logits"] = cls.new_zeros(cls.shape[0], len(ThermalDomain))  # [B, 5]
    return out


def _feature_sizes(strides: list[int], input_size: tuple[int, int], num_cells: int) -> list[tuple[int, int]]:
    """Level sizes (h, w) for an ``input_size`` (h, w) input, checked against the flattened cell count."""
    h, w = input_size
    sizes = [(math.ceil(h / s), math.ceil(w / s)) for s in strides]
    if sum(a * b for a, b in sizes) != num_cells:
        raise ValueError(
            f"graph output has {num_cells} cells, but an input of {h} x {w} gives levels {sizes}; "
            "export and evaluate at the same input size"
        )
    return sizes


def graph_outputs_to_forward(
    model: nn.Module, named: dict[str, np.ndarray | Tensor], input_size: tuple[int, int]
) -> dict[str, Any]:
    """One exported graph's outputs (by output name) as the dict ``model.forward`` returns for an input of
    ``input_size`` (h, w).

    - Phantom: ``face_cls`` and ``face_bbox`` are ``forward``'s tensors as they are.
    - Nexus: ``<key>_p3 .. <key>_p5`` become ``forward``'s per-level lists of ``cls_logits``, ``bbox_pred``,
      ``bbox_log_var`` and ``centerness`` (``surprise`` and ``next_predicted_stem`` are video state).
    - NightVision: ``cls`` / ``boxes`` / ``obj`` (flat, decoded) go through ``nightvision_levels_from_flat``.
    """
    from detforge.models.edge.nexus import Nexus
    from detforge.models.edge.nightvision import NightVision
    from detforge.models.edge.phantom import Phantom

    tensors = {
        k: torch.as_tensor(np.asarray(v)) if not isinstance(v, Tensor) else v for k, v in named.items()
    }
    if isinstance(model, Phantom):
        return {"face_cls": tensors["face_cls"], "face_bbox": tensors["face_bbox"]}
    if isinstance(model, Nexus):
        out: dict[str, Any] = {}
        for key in ("cls_logits", "bbox_pred", "bbox_log_var", "centerness"):
            levels = sorted(
                (int(m.group(1)), name)
                for name in tensors
                if (m := re.fullmatch(rf"{key}_p(\d+)", name)) is not None
            )
            if len(levels) != len(model.strides):
                raise ValueError(
                    f"Nexus graph: expected {len(model.strides)} '{key}_p*' outputs, got {levels}"
                )
            out[key] = [tensors[name] for _, name in levels]
        return out
    if isinstance(model, NightVision):
        return nightvision_levels_from_flat(
            model, tensors["cls"], tensors["boxes"], tensors["obj"], input_size
        )
    raise TypeError(f"expected a Nexus, Phantom or NightVision model, got {type(model).__name__}")


def graph_feeds(session, image: np.ndarray) -> dict[str, np.ndarray]:
    """Inputs for one run of an exported graph: ``image`` (array [1, C, H, W] float32) as the first input, zeros
    for the others (Nexus's ``predicted_stem``: a first frame, which the detection heads do not depend on)."""
    inputs = session.get_inputs()
    feeds = {inputs[0].name: np.ascontiguousarray(image, dtype=np.float32)}
    for extra in inputs[1:]:
        if not all(isinstance(d, int) for d in extra.shape):
            raise ValueError(
                f"graph input {extra.name!r} has a dynamic shape {extra.shape}; cannot make zeros"
            )
        feeds[extra.name] = np.zeros(extra.shape, dtype=np.float32)
    return feeds


class OrtDetectorNetwork:
    """An onnxruntime session of an exported edge graph, called like the model: ``images`` Tensor[B, C, H, W]
    -> ``forward``'s raw outputs (the graphs take one frame, so a batch runs image by image)."""

    def __init__(self, model: nn.Module, path: str | Path, threads: int = 2) -> None:
        from detforge.models.edge.onnx import ort_session

        self.model = model
        self.path = Path(path)
        self.session = ort_session(self.path, threads=threads)
        self.output_names = [o.name for o in self.session.get_outputs()]

    def __call__(self, images: Tensor) -> dict[str, Any]:
        per_image = []
        for image in images.detach().cpu().float().numpy():  # [C, H, W] each
            arrays = self.session.run(None, graph_feeds(self.session, image[None]))
            per_image.append(dict(zip(self.output_names, arrays, strict=True)))
        named = {k: np.concatenate([r[k] for r in per_image]) for k in self.output_names}  # batch on dim 0
        return graph_outputs_to_forward(self.model, named, tuple(images.shape[-2:]))


def calibration_frames(data: str, imgsz: int, count: int = 32, **dataset_kwargs: Any) -> list[np.ndarray]:
    """``count`` training images of ``data`` (a spec string), evenly spaced over the split, prepared like
    validation images (letterboxed to ``imgsz``): arrays [1, C, imgsz, imgsz] float32 in [0, 1]."""
    from detforge.data.datamodule import DetectionDataModule

    dm = DetectionDataModule(
        data=data, imgsz=imgsz, num_workers=0, augment=False, dataset_kwargs=dataset_kwargs
    )
    dm.setup("fit")  # the train split through the validation pipeline; an empty split raises there
    dataset = dm.train_dataset
    picks = np.linspace(0, len(dataset) - 1, min(count, len(dataset))).round().astype(int)
    return [dataset[int(i)][0][None].float().numpy() for i in np.unique(picks)]


@torch.no_grad()
def evaluate_networks(model: nn.Module, networks: dict[str, Network], loader) -> dict[str, dict[str, Tensor]]:
    """COCO metrics of each network on ``loader``'s batches, decoded by ``model.postprocess``.

    Args:
        model: the bare detector whose ``postprocess`` decodes every network's outputs.
        networks: name -> callable returning ``forward``'s raw outputs for images Tensor[B, C, H, W].
        loader: batches ``(images Tensor[B, C, H, W], targets)`` as the validation DataLoader gives them.

    Returns:
        name -> ``DetectionMAP.compute()`` (``map``, ``map_50``, ...).
    """
    from detforge.metrics import DetectionMAP
    from detforge.models.detector import metric_targets, to_original_size
    from detforge.targets import image_sizes_of

    metrics = {name: DetectionMAP() for name in networks}
    for images, targets in loader:
        sizes = image_sizes_of(targets, images)
        gts = metric_targets(targets)
        for name, network in networks.items():
            preds = model.postprocess(network(images), sizes)
            preds = [{k: v.cpu() for k, v in p.items() if k in ("boxes", "scores", "labels")} for p in preds]
            metrics[name].update(to_original_size(preds, targets), gts)
    return {name: dict(metric.compute()) for name, metric in metrics.items()}


def _state_dict_bytes(model: nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save({k: v.float() if v.is_floating_point() else v for k, v in model.state_dict().items()}, buffer)
    return buffer.tell()


def edge_accuracy(
    ckpt: str | Path,
    data: str,
    work_dir: str | Path,
    imgsz: int | None = None,
    calibration_images: int = 32,
    batch: int = 8,
    threads: int = 2,
    name: str | None = None,
    dataset_kwargs: dict[str, Any] | None = None,
) -> list[EdgeAccuracyRow]:
    """Export a ``detforge train`` checkpoint's edge detector to ONNX float32 and INT8 and evaluate all three
    backends on ``data``'s validation split.

    Args:
        ckpt: an ``ObjectDetector`` checkpoint whose model is Nexus, Phantom or NightVision.
        data: dataset spec string (``widerface:ROOT``, ``synthetic-thermal:256``, ...); the val split is scored,
            the train split gives the INT8 calibration images.
        work_dir: where ``<name>.onnx`` and ``<name>.int8.onnx`` are written.
        imgsz: network input side (default: the run's ``data.imgsz``, else the model's default input size).
        calibration_images: training images the INT8 activation ranges are calibrated on.
        batch, threads: validation batch size; onnxruntime intra-op threads.
        name: label for the rows and file names (default: the registered model name in the checkpoint).
        dataset_kwargs: extra keyword arguments for the data set classes (e.g. ``{"num_classes": 1}``).

    Returns:
        One row per backend, in ``BACKENDS`` order.
    """
    from detforge.data.datamodule import DetectionDataModule
    from detforge.engine.validate import load_detector
    from detforge.models.edge.onnx import export_edge_onnx, quantize_edge_int8

    detector = load_detector(ckpt, "cpu")
    model = detector.model
    name = name or detector.hparams.get("model") or type(model).__name__.lower()
    imgsz = int(imgsz or detector.hparams.get("imgsz") or max(model.default_input_size))
    dm = DetectionDataModule(
        data=data, imgsz=imgsz, batch_size=batch, num_workers=0, dataset_kwargs=dataset_kwargs
    )
    dm.setup("validate")
    if dm.val_dataset is None or len(dm.val_dataset) == 0:
        raise ValueError(f"{data!r} has no validation images")
    if dm.num_classes != model.num_classes:
        raise ValueError(
            f"{ckpt}: the model has {model.num_classes} classes but data {data!r} has {dm.num_classes}"
        )
    work = Path(work_dir)
    fp32_path = export_edge_onnx(model, work / f"{name}.onnx", input_size=(imgsz, imgsz))
    fp32 = OrtDetectorNetwork(model, fp32_path, threads=threads)
    frames = calibration_frames(data, imgsz, calibration_images, **(dataset_kwargs or {}))
    calibration = [list(graph_feeds(fp32.session, f).values()) for f in frames]
    int8_path = quantize_edge_int8(fp32_path, work / f"{name}.int8.onnx", calibration)
    networks: dict[str, Network] = {
        "pytorch": model,
        "onnx_fp32": fp32,
        "onnx_int8": OrtDetectorNetwork(model, int8_path, threads=threads),
    }
    stats = evaluate_networks(model, networks, dm.val_dataloader())
    sizes = {
        "pytorch": (_state_dict_bytes(model), None),
        "onnx_fp32": (fp32_path.stat().st_size, str(fp32_path)),
        "onnx_int8": (int8_path.stat().st_size, str(int8_path)),
    }
    return [
        EdgeAccuracyRow(name, b, float(stats[b]["map"]), float(stats[b]["map_50"]), sizes[b][0], sizes[b][1])
        for b in BACKENDS
    ]
