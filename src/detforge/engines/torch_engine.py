"""The eager PyTorch engine: the model's own ``forward`` (:mod:`detforge.engines.base`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

__all__ = ["TorchEngine"]


class TorchEngine:
    """``model`` (a detforge ``Detector``) run eagerly: ``images`` Tensor[B, C, H, W] -> its raw outputs,
    with each image's real (h, w) passed where ``forward`` takes ``image_sizes``
    (:func:`detforge.models.base.forward_with_sizes`). The caller sets eval mode and no-grad."""

    name = "torch"
    returns_detections = False

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __call__(
        self, images: Tensor, image_sizes: Sequence[tuple[int, int]] | None = None
    ) -> dict[str, Any]:
        from detforge.models.base import forward_with_sizes

        return forward_with_sizes(self.model, images, image_sizes)
