"""Which detector and engine a command runs: ``--engine torch|onnxruntime`` with ``--ckpt``, ``--model NAME
--weights W`` (named weights) or ``--weights FILE.onnx`` (an exported file).

- ``--weights FILE.onnx`` (a path ending in ``.onnx``): the file runs in onnxruntime; the PyTorch side
  (pre- and post-processing, class names, input size, F1-best confidence) is rebuilt from the file's metadata
  (:mod:`detforge.export.metadata`). Any other ``--weights`` is the model's named weights.
- ``--ckpt CKPT --engine onnxruntime``: the checkpoint is exported once to ``<ckpt stem>.<imgsz>.onnx``
  beside it (raw heads, dynamic batch) and that file is reused while it is newer than the checkpoint.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from detforge.engines.base import Engine

__all__ = ["cached_onnx", "is_onnx_file", "load_command_detector", "open_engine"]


def is_onnx_file(weights: str | os.PathLike | None) -> bool:
    """Whether ``--weights`` names an exported file (a path ending in ``.onnx``) rather than named weights."""
    return weights is not None and str(weights).lower().endswith(".onnx")


def load_command_detector(
    ckpt: str | os.PathLike | None,
    model_name: str | None,
    weights: str | None,
    device: str | torch.device | None,
):
    """The ``ObjectDetector`` a command runs, in eval mode on ``device``: from ``ckpt``, from the metadata of
    ``weights`` when it is an ``.onnx`` file (a skeleton with random weights: the network runs in
    onnxruntime), else ``model_name`` with its named ``weights``."""
    from detforge.engine.validate import load_detector, load_pretrained_detector, resolve_device

    if ckpt is not None:
        return load_detector(ckpt, device)
    if is_onnx_file(weights):
        from detforge.errors import MissingFileError
        from detforge.export.metadata import detector_from_metadata

        if not Path(str(weights)).is_file():
            raise MissingFileError(f"--weights {weights}: no such ONNX file")
        return detector_from_metadata(str(weights)).to(resolve_device(device)).eval()
    return load_pretrained_detector(str(model_name), str(weights), device)


def cached_onnx(
    detector: Any, ckpt: str | os.PathLike, imgsz: int, log: Callable[[str], None] | None = None
) -> Path:
    """``<ckpt stem>.<imgsz>.onnx`` beside ``ckpt``: the detector's raw graph at ``imgsz`` with a dynamic batch
    and the metadata to run it alone, exported (atomically) unless a file newer than the checkpoint is there.
    ``log`` gets one line saying which."""
    from detforge.engine.callbacks import atomic_write
    from detforge.export import detector_metadata, get_exporter

    ckpt = Path(ckpt)
    path = ckpt.with_name(f"{ckpt.stem}.{int(imgsz)}.onnx")
    if path.is_file() and path.stat().st_mtime >= ckpt.stat().st_mtime:
        if log:
            log(f"onnxruntime: {path} (cached export, newer than the checkpoint)")
        return path
    model = detector.model
    example = torch.rand(1, detector.hparams.in_chans, int(imgsz), int(imgsz), device=detector.device)
    metadata = detector_metadata(detector, (int(imgsz), int(imgsz)), nms=False, source=str(ckpt))

    def write(tmp: str) -> None:
        get_exporter("onnx")(model, Path(tmp), example=example, dynamic=True, metadata=metadata)

    atomic_write(path, write)
    if log:
        log(f"onnxruntime: exported {ckpt} to {path}")
    return path


def open_engine(
    name: str,
    detector: Any,
    imgsz: int,
    *,
    ckpt: str | os.PathLike | None = None,
    onnx: str | os.PathLike | None = None,
    threads: int | None = None,
    log: Callable[[str], None] | None = None,
) -> Engine:
    """The engine ``name`` (``torch`` / ``onnxruntime``) for ``detector`` at input size ``imgsz``: the eager
    model, or onnxruntime on ``onnx`` (an exported file) or else on ``ckpt``'s :func:`cached_onnx` export.
    Without either (named weights, a bare model) the onnxruntime engine runs a temporary export."""
    from detforge.engines.base import parse_engine_names
    from detforge.engines.ort import OnnxRuntimeEngine
    from detforge.engines.torch_engine import TorchEngine

    (name,) = parse_engine_names(name)
    if name == "torch":
        if onnx is not None:
            from detforge.errors import InvalidValueError

            raise InvalidValueError(f"--weights {onnx}: an exported file runs with --engine onnxruntime")
        return TorchEngine(detector.model)
    if onnx is None and ckpt is not None:
        onnx = cached_onnx(detector, ckpt, imgsz, log)
    if onnx is None:  # a model without a file: a temporary export, removed once the session holds it
        from detforge.export import get_exporter

        with tempfile.TemporaryDirectory(prefix="detforge_engine_") as tmp:
            example = torch.rand(1, detector.hparams.in_chans, int(imgsz), int(imgsz), device=detector.device)
            path = get_exporter("onnx")(
                detector.model, Path(tmp) / "model.onnx", example=example, dynamic=True
            )
            return OnnxRuntimeEngine(detector.model, path, threads)
    return OnnxRuntimeEngine(detector.model, onnx, threads)
