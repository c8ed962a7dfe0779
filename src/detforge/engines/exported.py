"""What the engines of exported graphs share (onnxruntime, OpenVINO): the graph's signature (output names,
static or dynamic batch, fixed input size), runs in chunks of a static batch, and the mapping from the
graph's named outputs back to the model's raw outputs (``Detector.outputs_from_export``) or, for a graph
exported with NMS, to per-image detections.

A subclass sets the signature with :meth:`ExportedGraphEngine._set_signature` and runs one batch in
:meth:`ExportedGraphEngine._run_once`; everything else is here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["NMS_OUTPUTS", "ExportedGraphEngine", "padded_to_detections"]

NMS_OUTPUTS = ("boxes", "scores", "labels", "num_detections")


class ExportedGraphEngine:
    """The shared part of an engine running an exported graph of ``model`` (a detforge ``Detector``, or its
    skeleton rebuilt from the file's metadata) stored at ``path``.

    A dynamic batch axis gets the whole batch in one run; a static one (batch N) runs N images at a time, the
    last run padded with zero images that are dropped."""

    name = "exported"

    def __init__(self, model: nn.Module, path: str | os.PathLike) -> None:
        self.model = model
        self.path = Path(path)
        self.output_names: list[str] = []
        self.returns_detections = False
        self.batch_size: int | None = None
        self.input_size: tuple[int, int] | None = None

    def _set_signature(self, output_names: Sequence[str], input_shape: Sequence[int | None]) -> None:
        """The graph's output names and its first input's shape (ints where static, None where dynamic)."""
        self.output_names = list(output_names)
        self.returns_detections = tuple(self.output_names[: len(NMS_OUTPUTS)]) == NMS_OUTPUTS
        batch, *_, height, width = input_shape
        self.batch_size = batch if isinstance(batch, int) else None  # None: dynamic
        self.input_size = (height, width) if isinstance(height, int) and isinstance(width, int) else None

    def _run_once(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The graph's outputs (in ``output_names`` order) for one run of ``feeds`` (arrays by input name)."""
        raise NotImplementedError

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
        static batch size (the last run padded with zeros, its padding dropped). The arrays are copies."""
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
            runs.append([np.array(out, copy=True) for out in self._run_once(part)])
        if len(runs) == 1 and step == total:  # one run of the whole batch: every output as the graph gave it
            return dict(zip(self.output_names, runs[0], strict=True))
        return {name: _join([run[i] for run in runs], step, total) for i, name in enumerate(self.output_names)}

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
            return padded_to_detections(named, images, image_sizes)
        return self.model.outputs_from_export(named, (int(images.shape[-2]), int(images.shape[-1])))


def _join(parts: list[np.ndarray], step: int, total: int) -> np.ndarray:
    """One output of runs of ``step`` images joined along its batch axis and cut to ``total`` images: the
    first axis of size ``step`` (axis 0 for most outputs; axis 1 for a layer-major one such as a DETR
    decoder's ``[layers, B, queries, C]``)."""
    axis = next((a for a, n in enumerate(parts[0].shape) if n == step), 0)
    joined = np.concatenate(parts, axis=axis)
    return np.take(joined, np.arange(total), axis=axis)


def padded_to_detections(
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
