"""The ONNX Runtime engine: an exported ``.onnx`` file (``detforge export``) in place of the model's forward.

The session runs on the CPU with intra-op threads = :func:`detforge.engine.threads.chosen_threads` (what
``configure_threads`` sets for torch), sequential execution and every graph optimisation. A raw graph's
outputs carry the names ``export_raw`` gave them, so they map straight back to the model's raw outputs
(``Detector.outputs_from_export``) for the shared ``postprocess``; a graph exported with NMS returns
detections. A dynamic batch axis gets the whole batch in one run; a static one (batch N) runs N images at a
time, the last run padded with zero images that are dropped (:mod:`detforge.engines.exported`, shared with
the OpenVINO engine).
"""

from __future__ import annotations

import os

import numpy as np
from torch import nn

from detforge.engines.exported import NMS_OUTPUTS, ExportedGraphEngine

__all__ = ["NMS_OUTPUTS", "OnnxRuntimeEngine", "ort_session"]


def ort_session(path: str | os.PathLike, threads: int | None = None):
    """An onnxruntime CPU session of the file at ``path``: ``threads`` intra-op threads (None:
    :func:`~detforge.engine.threads.chosen_threads`), one inter-op thread, sequential execution, graph
    optimisation ``ORT_ENABLE_ALL``."""
    import onnxruntime as ort

    from detforge.engine.threads import chosen_threads

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads) if threads else chosen_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # onnxruntime's threads spin for work after each run by default, taking the cores from the torch
    # post-processing that follows (detforge_n at 320 px: its post-processing 9.9 -> 16.1 ms beside them)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxRuntimeEngine(ExportedGraphEngine):
    """An exported graph of ``model`` run by onnxruntime (module docstring).

    Args:
        model: the detforge ``Detector`` the file was exported from (or its skeleton rebuilt from the file's
            metadata, :func:`detforge.export.metadata.detector_from_metadata`): its ``export_inputs`` name the
            graph's inputs and its ``outputs_from_export`` rebuild the raw outputs.
        path: the ``.onnx`` file.
        threads: intra-op threads (None: what ``configure_threads`` picks).
    """

    name = "onnxruntime"

    def __init__(self, model: nn.Module, path: str | os.PathLike, threads: int | None = None) -> None:
        from detforge.errors import InvalidValueError, MissingFileError

        super().__init__(model, path)
        if not self.path.is_file():
            raise MissingFileError(f"{self.path}: no such ONNX file")
        try:
            self.session = ort_session(self.path, threads)
        except Exception as err:  # onnxruntime's own error types: not an ONNX graph, an unknown operator
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise InvalidValueError(f"{self.path}: onnxruntime cannot load it ({first})") from err
        # ints where static, names (or None) where dynamic
        shape = [d if isinstance(d, int) else None for d in self.session.get_inputs()[0].shape]
        self._set_signature([o.name for o in self.session.get_outputs()], shape)

    def _run_once(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(self.output_names, feeds)
