"""What an exported ``.onnx`` file carries to rebuild detforge's pre- and post-processing around it.

``detforge export`` (and :func:`detector_metadata` for any ``ObjectDetector``) writes these string entries
into the file's ``metadata_props``; ``--engine onnxruntime --weights model.onnx`` reads them back
(:func:`read_metadata`) and rebuilds the model skeleton with :func:`detector_from_metadata`:

- ``detforge.format``: ``"1"``, the layout of these entries;
- ``detforge.hparams``: the ``ObjectDetector`` hyper-parameters as JSON (plain types, as a checkpoint holds
  them: the model name or class and init args, class names, ``imgsz``, the post-processing options), less
  the entries at ``ObjectDetector``'s defaults;
- ``detforge.postprocess``: the model's post-processing settings in effect at export, as JSON (they may
  differ from the hyper-parameters after ``set_postprocess``);
- ``detforge.input_size``: ``"H,W"`` of the example the graph was traced with;
- ``detforge.nms``: ``"1"`` when the graph ends in detections (``--nms``), else ``"0"``;
- ``detforge.best_conf``: the checkpoint's F1-best confidence (predict's default ``--conf``), or ``""``;
- ``detforge.source``: the checkpoint (or model and weights) the file came from, for people to read.

The skeleton gets random weights (the network runs in onnxruntime): only its settings, class names and
``outputs_from_export`` are used. The checkpoint itself is not needed, so the file can move on its own.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

__all__ = [
    "METADATA_FORMAT", "detector_from_metadata", "detector_metadata", "input_size_of", "read_metadata",
    "write_metadata",
]  # fmt: skip

METADATA_FORMAT = "1"


def detector_metadata(
    detector: Any, input_size: tuple[int, int], nms: bool, source: str = ""
) -> dict[str, str]:
    """The ``metadata_props`` entries (module docstring) of an ``ObjectDetector`` exported at ``input_size``
    (h, w), with NMS in the graph or not."""
    best_conf = getattr(detector, "best_conf", None)
    return {
        "detforge.format": METADATA_FORMAT,
        "detforge.hparams": json.dumps(
            _non_default(dict(detector.hparams)), default=_plain, separators=(",", ":")
        ),
        "detforge.postprocess": json.dumps(
            asdict(detector.model.postprocess_settings), separators=(",", ":")
        ),
        "detforge.input_size": f"{int(input_size[0])},{int(input_size[1])}",
        "detforge.nms": "1" if nms else "0",
        "detforge.best_conf": "" if best_conf is None else repr(float(best_conf)),
        "detforge.source": str(source),
    }


def _non_default(hparams: dict[str, Any]) -> dict[str, Any]:
    """``hparams`` less the entries at ``ObjectDetector``'s defaults (rebuilt the same): small files stay small."""
    import inspect

    from detforge.models.detector import ObjectDetector

    defaults = {
        name: p.default
        for name, p in inspect.signature(ObjectDetector.__init__).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    return {k: v for k, v in hparams.items() if k not in defaults or _key(v) != _key(defaults[k])}


def _key(value: Any) -> str:
    """``value`` as comparable text: its JSON (tuples as lists), else its repr."""
    try:
        return json.dumps(value, default=_plain, sort_keys=True)
    except TypeError:
        return repr(value)


def _plain(value: Any) -> Any:
    if isinstance(value, tuple | set):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def write_metadata(path: str | os.PathLike, metadata: Mapping[str, str]) -> Path:
    """Set ``metadata`` (str -> str) in the ONNX file at ``path``'s ``metadata_props`` (replacing entries of the
    same key), in place."""
    import onnx

    model = onnx.load(str(path))
    kept = [p for p in model.metadata_props if p.key not in metadata]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in metadata.items():
        model.metadata_props.add(key=str(key), value=str(value))
    onnx.save(model, str(path))
    return Path(path)


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """Every ``metadata_props`` entry of the ONNX file at ``path`` (the graph's weights are not read)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return dict(session.get_modelmeta().custom_metadata_map)


def detector_from_metadata(path: str | os.PathLike, metadata: Mapping[str, str] | None = None):
    """An ``ObjectDetector`` skeleton (random weights, eval mode, CPU) with the settings, class names and input
    size of the exported file at ``path``; ``best_conf`` and ``hparams.imgsz`` as at export.
    :class:`~detforge.errors.InvalidValueError` naming the file when it lacks detforge's metadata."""
    from detforge.engine.config import upgrade_hparams
    from detforge.errors import InvalidValueError
    from detforge.models.detector import ObjectDetector

    meta = dict(metadata) if metadata is not None else read_metadata(path)
    if meta.get("detforge.format") != METADATA_FORMAT or "detforge.hparams" not in meta:
        raise InvalidValueError(
            f"{path}: no detforge metadata (written by `detforge export` of this version?): export the "
            "checkpoint again with `detforge export --ckpt CKPT`, or run it with --ckpt CKPT --engine onnxruntime"
        )
    hparams = upgrade_hparams(json.loads(meta["detforge.hparams"]), source=str(path))
    backbone = hparams.get("backbone")
    if isinstance(backbone, dict) and backbone.get("pretrained"):
        hparams["backbone"] = {**backbone, "pretrained": False}  # random weights: never download
    hparams.update(weights=None, keep_classes=False, compile_model=False, deterministic=False, seed=None)
    detector = ObjectDetector(**hparams)
    if meta.get("detforge.postprocess"):
        detector.model.set_postprocess(**json.loads(meta["detforge.postprocess"]))
    conf = meta.get("detforge.best_conf", "")
    detector.best_conf = float(conf) if conf else None
    if (size := input_size_of(meta)) is not None:  # commands default --imgsz to the graph's size
        detector.hparams.imgsz = max(size)
    return detector.eval()


def input_size_of(metadata: Mapping[str, str]) -> tuple[int, int] | None:
    """``detforge.input_size`` as (h, w), or None."""
    text = metadata.get("detforge.input_size", "")
    if not text:
        return None
    h, w = (int(v) for v in text.split(","))
    return h, w
