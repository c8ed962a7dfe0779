"""Engines: what runs a detector's network between detforge's shared pre- and post-processing.

- :mod:`detforge.engines.base`: the :class:`Engine` protocol and :func:`engine_detections`;
- :mod:`detforge.engines.torch_engine`: :class:`TorchEngine`, the eager model;
- :mod:`detforge.engines.ort`: :class:`OnnxRuntimeEngine`, an exported ``.onnx`` file in onnxruntime;
- :mod:`detforge.engines.load`: the ``--engine`` / ``--weights FILE.onnx`` choices of ``predict``, ``val`` and
  ``bench`` (:func:`load_command_detector`, :func:`open_engine`, the checkpoint's cached export).
"""

from detforge.engines.base import ENGINE_NAMES, Engine, EngineName, engine_detections, parse_engine_names
from detforge.engines.load import cached_onnx, is_onnx_file, load_command_detector, open_engine
from detforge.engines.ort import OnnxRuntimeEngine, ort_session
from detforge.engines.torch_engine import TorchEngine

__all__ = [
    "ENGINE_NAMES", "Engine", "EngineName", "OnnxRuntimeEngine", "TorchEngine", "cached_onnx",
    "engine_detections", "is_onnx_file", "load_command_detector", "open_engine", "ort_session",
    "parse_engine_names",
]  # fmt: skip
