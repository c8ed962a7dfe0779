"""The ONNX Runtime engine: an exported ``.onnx`` file (``detforge export``) in place of the model's forward.

The session runs on the CPU with intra-op threads = :func:`detforge.engine.threads.chosen_threads` (what
``configure_threads`` sets for torch), sequential execution and every graph optimisation. A raw graph's
outputs carry the names ``export_raw`` gave them, so they map straight back to the model's raw outputs
(``Detector.outputs_from_export``) for the shared ``postprocess``; a graph exported with NMS returns
detections. A dynamic batch axis gets the whole batch in one run; a static one (batch N) runs N images at a
time, the last run padded with zero images that are dropped.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["OnnxRuntimeEngine", "ort_session"]

NMS_OUTPUTS = ("boxes", "scores", "labels", "num_detections")


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


def join_runs(parts: list[np.ndarray], step: int, total: int) -> np.ndarray:
    """One output of runs of ``step`` images joined along its batch axis and cut to ``total`` images: the
    first axis of size ``step`` (axis 0 for most outputs; axis 1 for a layer-major one such as a DETR
    decoder's ``[layers, B, queries, C]``, which cutting axis 0 would truncate to its first layers)."""
    axis = next((a for a, n in enumerate(parts[0].shape) if n == step), 0)
    joined = np.concatenate(parts, axis=axis)
    return np.take(joined, np.arange(total), axis=axis)


class OnnxRuntimeEngine:
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

        self.model = model
        self.path = Path(path)
        if not self.path.is_file():
            raise MissingFileError(f"{self.path}: no such ONNX file")
        try:
            self.session = ort_session(self.path, threads)
        except Exception as err:  # onnxruntime's own error types: not an ONNX graph, an unknown operator
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise InvalidValueError(f"{self.path}: onnxruntime cannot load it ({first})") from err
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.returns_detections = tuple(self.output_names[: len(NMS_OUTPUTS)]) == NMS_OUTPUTS
        first_input = self.session.get_inputs()[0]
        batch, *_, height, width = first_input.shape  # ints where static, names (or None) where dynamic
        self.batch_size: int | None = batch if isinstance(batch, int) else None  # None: dynamic
        self.input_size = (height, width) if isinstance(height, int) and isinstance(width, int) else None

    def _check_size(self, images: Tensor) -> None:
        from detforge.errors import InvalidValueError

        if images.ndim != 4:
            raise InvalidValueError(
                f"{self.path}: images must be Tensor[B, C, H, W], got {tuple(images.shape)}"
            )
        if self.input_size is not None and tuple(images.shape[-2:]) != self.input_size:
            h, w = self.input_size
            raise InvalidValueError(
                f"{self.path}: the graph takes {h}x{w} images, got {images.shape[-2]}x{images.shape[-1]}: "
                f"run it with --imgsz {max(h, w)}, or export it again at this size (detforge export --imgsz)"
            )

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The graph's outputs by name for ``feeds`` (arrays [B, ...] by input name), whole or in runs of the
        static batch size (the last run padded with zeros, its padding dropped)."""
        total = next(iter(feeds.values())).shape[0]
        step = self.batch_size or total
        runs = []
        for start in range(0, total, step):
            part = {k: v[start : start + step] for k, v in feeds.items()}
            short = step - next(iter(part.values())).shape[0]
            if short:
                part = {
                    k: np.concatenate([v, np.zeros((short, *v.shape[1:]), v.dtype)]) for k, v in part.items()
                }
            runs.append(self.session.run(self.output_names, part))
        if len(runs) == 1 and step == total:  # one run of the whole batch: every output as the graph gave it
            return dict(zip(self.output_names, runs[0], strict=True))
        return {
            name: join_runs([run[i] for run in runs], step, total) for i, name in enumerate(self.output_names)
        }

    def __call__(
        self, images: Tensor, image_sizes: Sequence[tuple[int, int]] | None = None
    ) -> dict[str, Any] | list[dict[str, Tensor]]:
        """``images`` Tensor[B, C, H, W] -> the model's raw outputs (on ``images``' device), or for a graph with
        NMS per image ``boxes`` (Tensor[K, 4] xyxy input pixels, clipped to the image's real (h, w)),
        ``scores`` and ``labels``."""
        self._check_size(images)
        inputs = self.model.export_inputs(images)  # images, plus a video model's zero state
        feeds = {k: np.ascontiguousarray(v.detach().cpu().float().numpy()) for k, v in inputs.items()}
        named = {k: torch.from_numpy(v).to(images.device) for k, v in self._run(feeds).items()}
        if self.returns_detections:
            return _padded_to_detections(named, images, image_sizes)
        return self.model.outputs_from_export(named, (int(images.shape[-2]), int(images.shape[-1])))


def _padded_to_detections(
    named: dict[str, Tensor], images: Tensor, image_sizes: Sequence[tuple[int, int]] | None
) -> list[dict[str, Tensor]]:
    """A graph's padded ``boxes`` [B, D, 4], ``scores`` [B, D], ``labels`` [B, D], ``num_detections`` [B] as one
    dict per image, boxes clipped to each image's real (h, w) (the graph clips to the padded input)."""
    sizes = image_sizes or [tuple(images.shape[-2:])] * images.shape[0]
    hw = torch.as_tensor([list(s) for s in sizes], dtype=named["boxes"].dtype, device=images.device)  # [B, 2]
    upper = hw.flip(-1).repeat(1, 2)[:, None]  # [B, 1, 4]: w, h, w, h
    boxes = named["boxes"].clamp(min=0).minimum(upper)  # [B, D, 4]
    counts = named["num_detections"].long().tolist()
    return [
        {"boxes": boxes[i, :n], "scores": named["scores"][i, :n], "labels": named["labels"][i, :n].long()}
        for i, n in enumerate(counts)
    ]
