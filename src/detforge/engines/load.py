"""Which detector and engine a command runs: ``--engine torch|onnxruntime|openvino`` with ``--ckpt``,
``--model NAME --weights W`` (named weights) or ``--weights FILE.onnx|FILE.xml`` (an exported file).

- ``--weights FILE.onnx`` / ``FILE.xml`` (:func:`is_exported_file`): the file runs in onnxruntime (``.onnx``)
  or OpenVINO (``.xml``, or ``.onnx`` too); the PyTorch side (pre- and post-processing, class names, input
  size, F1-best confidence) is rebuilt from the file's metadata (:mod:`detforge.export.metadata`). Any other
  ``--weights`` is the model's named weights.
- ``--ckpt CKPT --engine onnxruntime`` (``openvino``): the checkpoint is exported once to
  ``<ckpt stem>.<imgsz>.onnx`` (``.xml``) beside it (raw heads, dynamic batch) and that file is reused while
  it is newer than the checkpoint.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from detforge.engines.base import Engine

__all__ = [
    "EXPORTED_SUFFIXES", "cached_export", "cached_onnx", "is_exported_file", "is_onnx_file",
    "load_command_detector", "open_engine",
]  # fmt: skip

EXPORTED_SUFFIXES = (".onnx", ".xml")  # an ONNX graph, an OpenVINO IR
_CACHE_FORMATS = {
    "onnxruntime": ("onnx", ".onnx"),
    "openvino": ("openvino", ".xml"),
}  # engine: format, suffix


def is_onnx_file(weights: str | os.PathLike | None) -> bool:
    """Whether ``--weights`` names an ONNX file (a path ending in ``.onnx``)."""
    return weights is not None and str(weights).lower().endswith(".onnx")


def is_exported_file(weights: str | os.PathLike | None) -> bool:
    """Whether ``--weights`` names an exported file (a path ending in ``.onnx`` or ``.xml``, an OpenVINO IR)
    rather than named weights."""
    return weights is not None and str(weights).lower().endswith(EXPORTED_SUFFIXES)


def load_command_detector(
    ckpt: str | os.PathLike | None,
    model_name: str | None,
    weights: str | None,
    device: str | torch.device | None,
):
    """The ``ObjectDetector`` a command runs, in eval mode on ``device``: from ``ckpt``, from the metadata of
    ``weights`` when it is an exported file (a skeleton with random weights: the network runs in
    onnxruntime or OpenVINO), else ``model_name`` with its named ``weights``."""
    from detforge.engine.validate import load_detector, load_pretrained_detector, resolve_device

    if ckpt is not None:
        return load_detector(ckpt, device)
    if is_exported_file(weights):
        from detforge.errors import MissingFileError
        from detforge.export.metadata import detector_from_metadata

        if not Path(str(weights)).is_file():
            kind = "ONNX" if is_onnx_file(weights) else "OpenVINO"
            raise MissingFileError(f"--weights {weights}: no such {kind} file")
        return detector_from_metadata(str(weights)).to(resolve_device(device)).eval()
    return load_pretrained_detector(str(model_name), str(weights), device)


def cached_onnx(
    detector: Any, ckpt: str | os.PathLike, imgsz: int, log: Callable[[str], None] | None = None
) -> Path:
    """``<ckpt stem>.<imgsz>.onnx`` beside ``ckpt``: :func:`cached_export` for onnxruntime."""
    return cached_export(detector, ckpt, imgsz, "onnxruntime", log)


def cached_export(
    detector: Any,
    ckpt: str | os.PathLike,
    imgsz: int,
    engine: str = "onnxruntime",
    log: Callable[[str], None] | None = None,
) -> Path:
    """The checkpoint's export for ``engine`` beside ``ckpt``: ``<ckpt stem>.<imgsz>.onnx`` (onnxruntime) or
    ``<ckpt stem>.<imgsz>.xml`` + ``.bin`` (openvino), the detector's raw graph at ``imgsz`` with a dynamic
    batch and the metadata to run it alone, exported (atomically) unless a file newer than the checkpoint is
    there. ``log`` gets one line saying which."""
    from detforge.engine.callbacks import atomic_write
    from detforge.export import detector_metadata, get_exporter

    export_format, suffix = _CACHE_FORMATS[engine]
    ckpt = Path(ckpt)
    path = ckpt.with_name(f"{ckpt.stem}.{int(imgsz)}{suffix}")
    weights = path.with_suffix(".bin") if suffix == ".xml" else None
    fresh = path.is_file() and path.stat().st_mtime >= ckpt.stat().st_mtime
    if fresh and (weights is None or weights.is_file()):
        if log:
            log(f"{engine}: {path} (cached export, newer than the checkpoint)")
        return path
    model = detector.model
    example = torch.rand(1, detector.hparams.in_chans, int(imgsz), int(imgsz), device=detector.device)
    metadata = detector_metadata(detector, (int(imgsz), int(imgsz)), nms=False, source=str(ckpt))
    exporter = get_exporter(export_format)
    if weights is None:
        atomic_write(
            path, lambda tmp: exporter(model, Path(tmp), example=example, dynamic=True, metadata=metadata)
        )
    else:  # an IR is two files: both written aside, the .bin moved first, the .xml (what is checked) last
        with tempfile.TemporaryDirectory(prefix=f".{path.stem}-", dir=path.parent) as tmp:
            written = exporter(model, Path(tmp) / path.name, example=example, dynamic=True, metadata=metadata)
            os.replace(written.with_suffix(".bin"), weights)
            os.replace(written, path)
    if log:
        log(f"{engine}: exported {ckpt} to {path}")
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
    """The engine ``name`` (``torch`` / ``onnxruntime`` / ``openvino``) for ``detector`` at input size
    ``imgsz``: the eager model, or onnxruntime / OpenVINO on ``onnx`` (an exported file: ``.onnx``, or for
    OpenVINO ``.onnx`` / ``.xml``) or else on ``ckpt``'s :func:`cached_export`. Without either (named weights,
    a bare model) the engine runs a temporary export."""
    from detforge.engines.base import parse_engine_names
    from detforge.engines.torch_engine import TorchEngine
    from detforge.errors import InvalidValueError

    (name,) = parse_engine_names(name)
    if name == "torch":
        if onnx is not None:
            raise InvalidValueError(
                f"--weights {onnx}: an exported file runs with --engine onnxruntime or --engine openvino"
            )
        return TorchEngine(detector.model)
    if name == "onnxruntime":
        from detforge.engines.ort import OnnxRuntimeEngine as engine_class
    else:
        from detforge.engines.openvino_engine import OpenVINOEngine as engine_class
    if onnx is not None and name == "onnxruntime" and not is_onnx_file(onnx):
        raise InvalidValueError(f"--weights {onnx}: an OpenVINO IR runs with --engine openvino")
    if onnx is None and ckpt is not None:
        onnx = cached_export(detector, ckpt, imgsz, name, log)
    if onnx is None:  # a model without a file: a temporary export, removed once the engine holds it
        from detforge.export import get_exporter

        export_format, suffix = _CACHE_FORMATS[name]
        with tempfile.TemporaryDirectory(prefix="detforge_engine_") as tmp:
            example = torch.rand(1, detector.hparams.in_chans, int(imgsz), int(imgsz), device=detector.device)
            path = get_exporter(export_format)(
                detector.model, Path(tmp) / f"model{suffix}", example=example, dynamic=True
            )
            return engine_class(detector.model, path, threads)
    return engine_class(detector.model, onnx, threads)
