"""torchvision's COCO RetinaNet models as detforge :class:`~detforge.models.retinanet.RetinaNet` models.

- ``retinanet_resnet50_fpn`` (box AP 36.4): timm ``resnet50`` (torchvision's layer names) with
  ``FrozenBatchNorm2d`` (eps 0: torchvision overwrites it for these weights), FPN P3-P5 + P6 = conv(P5),
  P7, subnets of four 3x3 convs without normalisation, L1 loss on the deltas;
- ``retinanet_resnet50_fpn_v2`` (41.5; the ATSS paper's improvements): BatchNorm in the backbone (eps
  1e-5), P6 = conv(C5), GroupNorm(32) in the subnets, GIoU loss on the decoded boxes.

Both: 9 anchors per location (sizes ``(x, int(x 2^(1/3)), int(x 2^(2/3)))`` for x = 32..512 on P3-P7, ratios
0.5, 1, 2) placed as torchvision places them, matching at IoU 0.5 / 0.4 with low-quality matches, focal loss
(alpha 0.25, gamma 2), box coder weights (1, 1, 1, 1); detections: score > 0.05, the 1000 best per level,
NMS 0.5 per class, 300 per image.

Every builder defaults to torchvision's COCO configuration (90 classes: detforge label = torchvision label -
1; its resize as ``model.preprocess``; the stem and ``layer1`` frozen: ``trainable_backbone_layers=3``), so
``create_model(name, weights="coco")`` predicts what torchvision's model predicts. One difference, in training
only: the v2 backbone's BatchNorm is frozen by default (``frozen_batchnorm=True``), where torchvision's
trains it (``frozen_batchnorm=False`` gives torchvision's training losses exactly): fine-tuning from the COCO
weights on batches of a few images, as on a CPU, should not re-estimate their statistics (detectron2 and
detforge's fine-tuning recipe freeze them too), and a ResNet-50 whose statistics moved on a few noise
images (the conformance test's training-mode steps) differs from its ONNX graph by 1.3e-4 px in its boxes,
above that test's 1e-4. :func:`convert_retinanet`
renames torchvision's state dict and drops the background row of the class layer (a sigmoid head never uses
it).
"""

from __future__ import annotations

import re
from typing import Any

from torch import Tensor, nn
from torchvision.models.detection import RetinaNet_ResNet50_FPN_V2_Weights, RetinaNet_ResNet50_FPN_Weights

from detforge.models.registry import register_model
from detforge.models.retinanet.model import RetinaNet
from detforge.models.torchvision_zoo.coco import (
    COCO_CATEGORY_IDS,
    COCO_CLASS_NAMES,
    NUM_COCO_CLASSES,
    TUTORIAL_FINETUNE,
    torchvision_preprocess,
)
from detforge.models.torchvision_zoo.resnet_body import resnet50_body
from detforge.models.weights import Weights, register_weights

__all__ = ["convert_retinanet", "retinanet_resnet50_fpn", "retinanet_resnet50_fpn_v2"]

# torchvision's RetinaNet defaults that the detforge RetinaNet does not already have (those: anchors, matching
# 0.5 / 0.4, focal 0.25 / 2, box weights 1, NMS 0.5, 300 detections, 1000 candidates per level).
_TORCHVISION: dict[str, Any] = {"score_thresh": 0.05, "pre_nms_topk": 1000}

# Fine-tuning from the COCO weights: torchvision's detection fine-tuning tutorial (SGD, lr 0.005 for batches of
# 2, momentum 0.9, weight decay 5e-4), as the Faster R-CNN weights; a RetinaNet's head is trained from those
# weights too (torchvision's reference recipe: SGD 0.01 for batches of 16), with the tutorial's StepLR(3, 0.1)
# (epochs) after the general warmup of ``detforge train``.
FINETUNE = TUTORIAL_FINETUNE


def _build(
    body: nn.Module, num_classes: int, min_size: int, max_size: int, options: dict[str, Any]
) -> RetinaNet:
    """RetinaNet on ``body`` with torchvision's defaults under ``options``; ``model.preprocess`` set."""
    if int(options.get("in_chans", 3)) != 3:
        raise ValueError(f"torchvision's RetinaNet takes RGB images (in_chans=3), got {options['in_chans']}")
    options = {**_TORCHVISION, "input_size": (int(min_size), int(min_size)), **options}
    model = RetinaNet(body, num_classes, **options)
    model.preprocess = torchvision_preprocess(min_size, max_size)
    return model


@register_model("retinanet_resnet50_fpn")
def retinanet_resnet50_fpn(
    num_classes: int = NUM_COCO_CLASSES,
    *,
    pretrained: bool | str = False,
    min_size: int = 800,
    max_size: int = 1333,
    trainable_backbone_layers: int = 3,
    frozen_batchnorm: bool = True,
    frozen_batchnorm_eps: float = 0.0,
    **kwargs: Any,
) -> RetinaNet:
    """torchvision's ``retinanet_resnet50_fpn`` (RetinaNet, ResNet-50-FPN; COCO box AP 36.4 with
    ``weights="coco"``).

    Args:
        num_classes: object classes (COCO: 90, labels = COCO category id - 1).
        pretrained: the backbone's ImageNet weights (timm's hub, or a file: a torchvision ``resnet50-*.pth``
            loads too); ignored weights when the model is built with ``weights=``.
        min_size, max_size: torchvision's resize (``model.preprocess``) and the default input size.
        trainable_backbone_layers: ResNet stages trained, from the last (0-5; torchvision's default 3).
        frozen_batchnorm: the backbone's BatchNorm frozen (torchvision's pretrained configuration); False:
            trainable BatchNorm (torchvision's from-scratch model).
        frozen_batchnorm_eps: the frozen BatchNorm's eps (0 for torchvision's COCO weights).
        **kwargs: :class:`~detforge.models.retinanet.RetinaNet` options (post-processing, matching, losses).
    """
    body = resnet50_body(
        (2, 3, 4), float(frozen_batchnorm_eps) if frozen_batchnorm else None, trainable_backbone_layers, pretrained
    )
    return _build(body, num_classes, min_size, max_size, kwargs)


@register_model("retinanet_resnet50_fpn_v2")
def retinanet_resnet50_fpn_v2(
    num_classes: int = NUM_COCO_CLASSES,
    *,
    pretrained: bool | str = False,
    min_size: int = 800,
    max_size: int = 1333,
    trainable_backbone_layers: int = 3,
    frozen_batchnorm: bool = True,
    **kwargs: Any,
) -> RetinaNet:
    """torchvision's ``retinanet_resnet50_fpn_v2`` (COCO box AP 41.5): P6 from C5, GroupNorm(32) in the
    subnets, GIoU box loss.

    Args: as :func:`retinanet_resnet50_fpn`; BatchNorm eps 1e-5, frozen by default (False: trained, as
    torchvision's v2 trains it; the same detections, see the module docstring).
    """
    body = resnet50_body((2, 3, 4), 1e-5 if frozen_batchnorm else None, trainable_backbone_layers, pretrained)
    options = {"extra_from": "backbone", "head_norm": "GN", "box_loss": "giou", **kwargs}
    return _build(body, num_classes, min_size, max_size, options)


# ---------------------------------------------------------------------------------------------- weights
# The class layer's background row (9 anchors x (256 x 3 x 3 + 1)): torchvision's parameter count less it is
# the detforge model's.
_BACKGROUND_ROW = 9 * (256 * 3 * 3 + 1)
_RENAMES = (
    ("backbone.body.", "features.body."),
    ("backbone.fpn.extra_blocks.p6.", "features.fpn.fpn.extra_blocks.convs.0."),
    ("backbone.fpn.extra_blocks.p7.", "features.fpn.fpn.extra_blocks.convs.1."),
    ("backbone.fpn.", "features.fpn.fpn."),
    ("head.classification_head.conv.", "head.cls_subnet."),
    ("head.classification_head.cls_logits.", "head.cls_logits."),
    ("head.regression_head.conv.", "head.box_subnet."),
    ("head.regression_head.bbox_reg.", "head.bbox_reg."),
)
_LEGACY_CONV = re.compile(r"^(head\.\w+_subnet\.)(\d+)\.(weight|bias)$")  # before torchvision's version 2


def convert_retinanet(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """torchvision RetinaNet state dict (either model) -> detforge ``RetinaNet`` state dict.

    Renames ``backbone.body`` / ``backbone.fpn`` (P6 / P7: ``extra_blocks.convs.0`` / ``.1``) and the head's
    subnets (``conv.<i>.<j>``; the legacy ``conv.<2 i>`` of checkpoints before torchvision's version 2 becomes
    ``<i>.0``), and drops class 0 (background) of the class layer: its rows ``a * K`` for each anchor ``a`` of
    the K = C + 1 classes (the anchor count read from the box layer). BatchNorm's ``num_batches_tracked``
    counters are left out (the model keeps its own).
    """
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        prefix = next((p for p in _RENAMES if key.startswith(p[0])), None)
        if prefix is None:
            raise KeyError(key)
        new = _LEGACY_CONV.sub(
            lambda m: f"{m.group(1)}{int(m.group(2)) // 2}.0.{m.group(3)}", prefix[1] + key[len(prefix[0]) :]
        )
        out[new] = value
    num_anchors = int(out["head.bbox_reg.weight"].shape[0]) // 4
    for name in ("head.cls_logits.weight", "head.cls_logits.bias"):
        value = out[name]
        per_anchor = value.reshape(num_anchors, -1, *value.shape[1:])  # [A, K, ...]
        out[name] = per_anchor[:, 1:].reshape(-1, *value.shape[1:]).clone()  # [A * (K - 1), ...]
    return out


def _register(name: str, enum: Any) -> None:
    meta = enum.meta
    register_weights(
        name,
        "coco",
        Weights(
            url=enum.url,
            sha256=enum.url.rsplit("-", 1)[-1].split(".")[0],
            class_names=COCO_CLASS_NAMES,
            category_ids=COCO_CATEGORY_IDS,
            preprocess=torchvision_preprocess(800, 1333),
            licence="BSD-3-Clause",
            metrics={"coco/box_ap": float(meta["_metrics"]["COCO-val2017"]["box_map"])},
            convert=convert_retinanet,
            recipe=FINETUNE,
            source="torchvision",
            num_params=int(meta["num_params"]) - _BACKGROUND_ROW,
        ),
    )


_register("retinanet_resnet50_fpn", RetinaNet_ResNet50_FPN_Weights.COCO_V1)
_register("retinanet_resnet50_fpn_v2", RetinaNet_ResNet50_FPN_V2_Weights.COCO_V1)
