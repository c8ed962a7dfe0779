"""torchvision's ResNet-50 detection body on timm's ``resnet50``: the same layer names, BatchNorm frozen (with
the COCO weights' eps) or trainable, and the first stages without gradients as ``_resnet_fpn_extractor`` has
them. Faster R-CNN takes levels 1-4 (strides 4-32), RetinaNet levels 2-4 (C3-C5, strides 8-32)."""

from __future__ import annotations

from collections.abc import Sequence

from timm.layers import freeze_batch_norm_2d
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from detforge.models.backbone import FeatureBackboneConfig, build_backbone
from detforge.models.frozen_norm import fuse_frozen_batchnorm

__all__ = ["resnet50_body"]

# torchvision's trainable_backbone_layers counts these from the top
_STAGES = ["layer4", "layer3", "layer2", "layer1", "conv1"]


def resnet50_body(
    out_indices: Sequence[int],
    frozen_eps: float | None,
    trainable_layers: int,
    pretrained: bool | str = False,
) -> nn.Module:
    """timm ``resnet50`` features at ``out_indices``, BatchNorm frozen with eps ``frozen_eps`` (None: trainable
    BatchNorm), the parameters before the last ``trainable_layers`` of (conv1, layer1, ..., layer4) frozen."""
    if not 0 <= int(trainable_layers) <= 5:
        raise ValueError(f"trainable_backbone_layers must be in [0, 5], got {trainable_layers}")
    body = build_backbone(
        FeatureBackboneConfig("resnet50", pretrained=pretrained, out_indices=tuple(out_indices))
    )
    if frozen_eps is not None:
        body = freeze_batch_norm_2d(body)
        for module in body.modules():
            if isinstance(module, FrozenBatchNorm2d):
                module.eps = float(frozen_eps)
        fuse_frozen_batchnorm(body)
    trained = _STAGES[: int(trainable_layers)]
    if int(trainable_layers) == 5:
        trained.append("bn1")
    for name, param in body.named_parameters():
        if not any(name.startswith(prefix) for prefix in trained):
            param.requires_grad_(False)
    return body
