"""The OpenVINO engine: an exported OpenVINO IR (``.xml`` + ``.bin``, ``detforge export --format openvino``)
or ``.onnx`` file in place of the model's forward, compiled for the CPU.

The compiled model runs with ``INFERENCE_NUM_THREADS`` = :func:`detforge.engine.threads.chosen_threads` (what
``configure_threads`` sets for torch), ``PERFORMANCE_HINT`` ``LATENCY`` and ``INFERENCE_PRECISION_HINT``
``f32``: on CPUs with AVX-512 but no AMX, OpenVINO's default bf16 inference was slower than f32, and f32 keeps
the outputs within float rounding of PyTorch's. Outputs map back to the model's raw outputs (or detections,
for a graph with NMS) exactly as in the onnxruntime engine (:mod:`detforge.engines.exported`).
"""

from __future__ import annotations

import os

import numpy as np
from torch import nn

from detforge.engines.exported import ExportedGraphEngine

__all__ = ["OpenVINOEngine", "openvino_config"]


def openvino_config(threads: int | None = None) -> dict[str, object]:
    """The CPU plugin's configuration (module docstring); ``threads`` None: ``chosen_threads()``."""
    from detforge.engine.threads import chosen_threads

    return {
        "INFERENCE_NUM_THREADS": int(threads) if threads else chosen_threads(),
        "INFERENCE_PRECISION_HINT": "f32",
        "PERFORMANCE_HINT": "LATENCY",
    }


class OpenVINOEngine(ExportedGraphEngine):
    """An exported graph of ``model`` run by OpenVINO on the CPU (module docstring).

    Args:
        model: the detforge ``Detector`` the file was exported from (or its skeleton rebuilt from the file's
            metadata, :func:`detforge.export.metadata.detector_from_metadata`).
        path: the ``.xml`` file (its ``.bin`` beside it) or an ``.onnx`` file.
        threads: inference threads (None: what ``configure_threads`` picks).
    """

    name = "openvino"

    def __init__(self, model: nn.Module, path: str | os.PathLike, threads: int | None = None) -> None:
        from detforge.errors import InvalidValueError, MissingFileError

        super().__init__(model, path)
        if not self.path.is_file():
            raise MissingFileError(f"{self.path}: no such OpenVINO file")
        try:
            import openvino as ov
        except ImportError as err:
            raise InvalidValueError(
                "--engine openvino needs the openvino package: pip install 'detforge[export]'"
            ) from err
        try:
            self.compiled = ov.Core().compile_model(str(self.path), "CPU", openvino_config(threads))
        except Exception as err:  # OpenVINO's own error types: not a model, an unsupported operator
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise InvalidValueError(f"{self.path}: OpenVINO cannot load it ({first})") from err
        self.input_names = [port.get_any_name() for port in self.compiled.inputs]
        shape = [d.get_length() if d.is_static else None for d in self.compiled.inputs[0].get_partial_shape()]
        self._set_signature([port.get_any_name() for port in self.compiled.outputs], shape)
        self.request = self.compiled.create_infer_request()

    def _run_once(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        # the request's output buffers are reused by the next run: ExportedGraphEngine._run copies them
        self.request.infer(feeds)
        return [self.request.get_output_tensor(i).data for i in range(len(self.output_names))]
