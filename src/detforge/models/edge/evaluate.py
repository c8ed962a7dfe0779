"""COCO accuracy of an edge detector in PyTorch eager, onnxruntime float32 and onnxruntime INT8.

The exported graphs (``detforge.export``, the model's ``export_raw``) return raw head tensors; the model's
``outputs_from_export`` turns them back into the dict its ``forward`` returns, so all three backends go
through the model's own ``postprocess``, the same mapping to original image sizes and the same
``DetectionMAP``: the rows differ only in the network's numerics. INT8 is ``detforge.export.quantize_int8``
calibrated on training images (``calibration_frames``). Nothing here depends on the model's type.

``edge_accuracy(ckpt, data, work_dir)`` does it all for one ``detforge train`` checkpoint;
``benchmarks/edge_accuracy.py`` prints the table for several models.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "BACKENDS",
    "EdgeAccuracyRow",
    "OrtDetectorNetwork",
    "calibration_frames",
    "edge_accuracy",
    "evaluate_networks",
    "graph_outputs_to_forward",
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


def graph_outputs_to_forward(
    model: nn.Module, named: dict[str, np.ndarray | Tensor], input_size: tuple[int, int]
) -> dict[str, Any]:
    """One exported graph's outputs (by output name) as the dict ``model.forward`` returns for an input of
    ``input_size`` (h, w): the model's ``outputs_from_export`` hook."""
    if not hasattr(model, "outputs_from_export"):
        raise TypeError(f"{type(model).__name__} is not a detforge Detector (no outputs_from_export)")
    tensors = {k: v if isinstance(v, Tensor) else torch.as_tensor(np.asarray(v)) for k, v in named.items()}
    return model.outputs_from_export(tensors, (int(input_size[0]), int(input_size[1])))


class OrtDetectorNetwork:
    """An onnxruntime session of a model's raw graph, called like the model: ``images`` Tensor[B, C, H, W] ->
    ``forward``'s raw outputs. The graph's inputs for each image are ``model.export_inputs`` (a video model's
    state: a first frame); a batch runs image by image."""

    def __init__(self, model: nn.Module, path: str | Path, threads: int = 2) -> None:
        from detforge.models.edge.onnx import ort_session

        self.model = model
        self.path = Path(path)
        self.session = ort_session(self.path, threads=threads)
        self.output_names = [o.name for o in self.session.get_outputs()]

    def __call__(self, images: Tensor) -> dict[str, Any]:
        per_image = []
        for image in images.detach().cpu().float():  # [C, H, W] each
            feeds = {k: v.numpy() for k, v in self.model.export_inputs(image[None]).items()}
            arrays = self.session.run(None, feeds)
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
    from detforge.targets import image_sizes_of, metric_targets, to_original_size

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
        ckpt: an ``ObjectDetector`` checkpoint (any detforge Detector; made for Nexus, Phantom, NightVision).
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
    from detforge.export import export_onnx, quantize_int8

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
    fp32_path = export_onnx(model, work / f"{name}.onnx", image_size=(imgsz, imgsz))
    fp32 = OrtDetectorNetwork(model, fp32_path, threads=threads)
    frames = calibration_frames(data, imgsz, calibration_images, **(dataset_kwargs or {}))
    calibration = [model.export_inputs(torch.from_numpy(f)) for f in frames]
    int8_path = quantize_int8(fp32_path, work / f"{name}.int8.onnx", calibration)
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
