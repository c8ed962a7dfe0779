"""Inference helpers of :class:`~detforge.models.detector.ObjectDetector`: the data config and preprocessing of
timm-style ``transform_config`` users, and ONNX export (to a temporary file when no path is given)."""

from __future__ import annotations

import os
from typing import Any

from torch import Tensor, nn

__all__ = ["DeployHelpers"]


class DeployHelpers:
    """Mixin of :class:`~detforge.models.detector.ObjectDetector` (reads ``self.model``, ``self.hparams``,
    ``self.transform_config``)."""

    model: nn.Module
    hparams: Any
    transform_config: Any
    training: bool

    def get_data_config(self) -> dict[str, Any]:
        """``mean``, ``std``, ``input_size`` (C, H, W) and ``interpolation``; needs a ``transform_config``."""
        if self.transform_config is None:
            raise RuntimeError(
                "get_data_config() needs ObjectDetector(transform_config=TransformConfig(...))"
            )
        from detforge.engine.config import resolve_data_config

        return resolve_data_config(self.transform_config, self.hparams.in_chans, self.hparams.backbone)

    def preprocess(self, images: Any) -> Tensor:
        """PIL images / uint8 or float tensors (C, H, W) as the network input: Tensor[B, C, S, S], letterboxed
        by the validation transforms (:func:`detforge.engine.config.preprocess_images`): aspect ratio kept,
        grey padding bottom/right, so boxes map back with ``scale_boxes``."""
        from detforge.engine.config import preprocess_images

        return preprocess_images(images, self.get_data_config(), self.transform_config.normalize)[0]

    def to_onnx(
        self,
        save_path: str | os.PathLike | None = None,
        example_input: Tensor | None = None,
        opset_version: int = 17,
        dynamic_axes: dict[str, dict[int, str]] | None = None,
        with_nms: bool = False,
        **kwargs: Any,
    ) -> str:
        """Export the detector to ONNX: raw head tensors, or with ``with_nms`` final ``boxes`` / ``scores`` /
        ``labels`` with decoding and NMS inside the graph. Returns the path written: ``save_path``, or a new
        temporary ``.onnx`` file when None (the caller removes it)."""
        import tempfile

        from detforge.export import export_onnx

        if save_path is None:
            fd, save_path = tempfile.mkstemp(prefix="detforge_", suffix=".onnx")
            os.close(fd)
        was_training = self.training
        self.eval()
        kwargs.update(example_input=example_input, opset_version=opset_version, dynamic_axes=dynamic_axes)
        try:
            return str(export_onnx(self.model, save_path, with_nms=with_nms, **kwargs))
        finally:
            self.train(was_training)
