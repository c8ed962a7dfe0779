"""torchvision feature stacks behind timm's ``features_only`` interface, for backbones whose torchvision layer
names differ from timm's (MobileNetV3: torchvision's ``features.13`` is not timm's ``blocks.5.0``), so that a
torchvision detector's checkpoint loads without renaming every layer.

:class:`TorchvisionFeatureBody` wraps a sequential stack (``torchvision.models.mobilenet_v3_large().features``)
and returns the outputs of chosen layers; its ``feature_info`` answers ``channels()`` / ``reduction()`` as
timm's does, and lists every stride level's last layer in ``info`` (what :func:`detforge.models.backbone.
freeze_stages` walks), so :class:`~detforge.models.backbone.FeatureBody` and detforge's freezing take it like
a timm body. Its state dict keys are the stack's own (``0.0.weight``, ..., ``16.1.running_var``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn
from torchvision.ops.misc import FrozenBatchNorm2d

from detforge.models.frozen_norm import fuse_frozen_batchnorm

__all__ = ["LayerFeatureInfo", "TorchvisionFeatureBody", "mobilenet_v3_large_body"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class LayerFeatureInfo:
    """timm's ``feature_info`` for a sequential stack: ``channels()`` and ``reduction()`` of the returned
    layers; ``info``: one dict (``module``, ``num_chs``, ``reduction``) per stride level, its last layer."""

    def __init__(
        self, channels: Sequence[int], reductions: Sequence[int], return_layers: Sequence[int]
    ) -> None:
        self._channels = [int(channels[i]) for i in return_layers]
        self._reductions = [int(reductions[i]) for i in return_layers]
        last = {int(r): i for i, r in enumerate(reductions)}  # stride -> its last layer
        self.info: list[dict[str, Any]] = [
            {"module": str(i), "num_chs": int(channels[i]), "reduction": r} for r, i in sorted(last.items())
        ]

    def channels(self) -> list[int]:
        """Channels of each returned map, finest first."""
        return list(self._channels)

    def reduction(self) -> list[int]:
        """Stride of each returned map, finest first."""
        return list(self._reductions)


class TorchvisionFeatureBody(nn.Sequential):
    """A torchvision sequential feature stack returning the outputs of ``return_layers`` (indices into it,
    increasing); the layers after the last returned one are dropped (torchvision's ``IntermediateLayerGetter``).

    Args:
        layers: the stack (e.g. ``mobilenet_v3_large().features``).
        return_layers: indices of the layers whose outputs ``forward`` returns.
        channels, reductions: output channels and stride of every layer of ``layers``.
        name: the architecture's name (``pretrained_cfg["architecture"]``, for messages).

    ``forward(images Tensor[B, 3, H, W], normalised) -> [Tensor[B, channels[i], H / reductions[i], ...] for i in
    return_layers]``.
    """

    def __init__(
        self,
        layers: nn.Sequential,
        return_layers: Sequence[int],
        channels: Sequence[int],
        reductions: Sequence[int],
        name: str = "torchvision",
    ) -> None:
        return_layers = [int(i) for i in return_layers]
        if (
            not return_layers
            or sorted(set(return_layers)) != return_layers
            or return_layers[-1] >= len(layers)
        ):
            raise ValueError(
                f"return_layers must be increasing indices below {len(layers)}, got {return_layers}"
            )
        if not len(channels) == len(reductions) == len(layers):
            raise ValueError("channels and reductions need one entry per layer")
        super().__init__(*list(layers)[: return_layers[-1] + 1])
        self.return_layers = tuple(return_layers)
        self.feature_info = LayerFeatureInfo(channels, reductions, return_layers)
        self.pretrained_cfg = {"architecture": name, "mean": IMAGENET_MEAN, "std": IMAGENET_STD}

    def forward(self, x: Tensor) -> list[Tensor]:  # type: ignore[override]
        out = []
        for i, layer in enumerate(self):
            x = layer(x)
            if i in self.return_layers:
                out.append(x)
        return out


def mobilenet_v3_large_body(
    frozen_batchnorm: bool = True, trainable_layers: int = 6, return_stages: Sequence[int] | None = None
) -> TorchvisionFeatureBody:
    """torchvision's MobileNetV3-Large features as torchvision's detectors use them (``_mobilenet_extractor``
    with ``fpn=True``): the stages start at the stem and at every strided block (layers 0, 2, 4, 7, 13, 16:
    the last two, both stride 32, are returned by default).

    Args:
        frozen_batchnorm: BatchNorm as ``FrozenBatchNorm2d`` (eps 1e-5: torchvision's pretrained models);
            False: trainable BatchNorm (eps 1e-3, momentum 0.01: torchvision's from-scratch model).
        trainable_layers: stages left trainable, counted from the last (torchvision's
            ``trainable_backbone_layers``, 0-6); the layers before them get ``requires_grad=False``.
        return_stages: indices of the stages returned (default: the last two).
    """
    from torchvision.models import mobilenet_v3_large

    norm = FrozenBatchNorm2d if frozen_batchnorm else None  # None: torchvision's BatchNorm(eps 1e-3)
    layers = mobilenet_v3_large(weights=None, norm_layer=norm).features
    if frozen_batchnorm:
        fuse_frozen_batchnorm(layers)
    stages = [0] + [i for i, b in enumerate(layers) if getattr(b, "_is_cn", False)] + [len(layers) - 1]
    if not 0 <= int(trainable_layers) <= len(stages):
        raise ValueError(f"trainable_layers must be in [0, {len(stages)}], got {trainable_layers}")
    freeze_before = len(layers) if int(trainable_layers) == 0 else stages[len(stages) - int(trainable_layers)]
    for layer in list(layers)[:freeze_before]:
        layer.requires_grad_(False)
    channels = [int(layer.out_channels) for layer in layers]
    reductions, stride = [], 1
    for i, layer in enumerate(layers):
        stride *= 2 if i == 0 or getattr(layer, "_is_cn", False) else 1
        reductions.append(stride)
    chosen = (len(stages) - 2, len(stages) - 1) if return_stages is None else tuple(return_stages)
    return TorchvisionFeatureBody(
        layers, [stages[k] for k in chosen], channels, reductions, "mobilenet_v3_large"
    )
