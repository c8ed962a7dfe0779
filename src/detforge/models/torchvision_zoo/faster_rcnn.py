"""torchvision's COCO Faster R-CNN models as detforge :class:`~detforge.models.faster_rcnn.FasterRCNN` models.

- ``fasterrcnn_resnet50_fpn`` (box AP 37.0): timm ``resnet50`` (torchvision's layer names) with
  ``FrozenBatchNorm2d`` (eps 0: torchvision overwrites it for these weights), FPN P2-P5 + "pool", one-conv RPN
  head, two-FC box head;
- ``fasterrcnn_resnet50_fpn_v2`` (46.7): trainable BatchNorm in the backbone, FPN with BatchNorm, two-conv RPN
  head, box head of four conv + BatchNorm layers and one FC layer;
- ``fasterrcnn_mobilenet_v3_large_fpn`` (32.8) and ``..._320_fpn`` (22.8): torchvision's MobileNetV3-Large
  features (:mod:`detforge.models.torchvision_body`), two stride-32 maps (layers 13 and 16) + "pool" into the
  FPN, 15 anchors (32-512 x 3 ratios) on every level, proposals with objectness below 0.05 dropped.

Every builder defaults to torchvision's COCO configuration: 90 classes (detforge label = torchvision label - 1;
the background stays the box head's internal index 0), its resize (``model.preprocess``), its RPN top-n,
thresholds and detections per image, anchors placed as torchvision places them (``anchor_strides=
"floor_ratio"``), frozen stem and first stages (``trainable_backbone_layers=3``) and every detection candidate
kept for NMS (``pre_nms_topk`` = proposals x classes), so that ``create_model(name, weights="coco")`` predicts
what torchvision's model predicts. :func:`convert_faster_rcnn` renames torchvision's state dict.
"""

from __future__ import annotations

import re
from typing import Any

from torch import Tensor, nn
from torchvision.models.detection import (
    FasterRCNN_MobileNet_V3_Large_320_FPN_Weights,
    FasterRCNN_MobileNet_V3_Large_FPN_Weights,
    FasterRCNN_ResNet50_FPN_V2_Weights,
    FasterRCNN_ResNet50_FPN_Weights,
)

from detforge.models.faster_rcnn.model import FasterRCNN
from detforge.models.registry import register_model
from detforge.models.torchvision_body import mobilenet_v3_large_body
from detforge.models.torchvision_zoo.coco import (
    COCO_CATEGORY_IDS,
    COCO_CLASS_NAMES,
    NUM_COCO_CLASSES,
    TUTORIAL_FINETUNE,
    torchvision_preprocess,
)
from detforge.models.torchvision_zoo.resnet_body import resnet50_body
from detforge.models.weights import Weights, register_weights

__all__ = [
    "convert_faster_rcnn",
    "fasterrcnn_mobilenet_v3_large_320_fpn",
    "fasterrcnn_mobilenet_v3_large_fpn",
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet50_fpn_v2",
    "torchvision_preprocess",
]

# torchvision's FasterRCNN defaults that differ from detforge's FasterRCNN ones (the rest agree: RPN top-n
# 2000 / 1000, NMS 0.7, matching 0.7 / 0.3 and 0.5, sampling 256 x 0.5 and 512 x 0.25, box weights 10, 10, 5, 5);
# proposals in anchor order (the same detections; exported raw outputs independent of the runtime's rounding)
_TORCHVISION = {
    "anchor_strides": "floor_ratio", "proposal_order": "anchor",
    "score_thresh": 0.05, "nms_thresh": 0.5, "max_detections_per_image": 100,
}  # fmt: skip
_MOBILENET_ANCHORS = ((32.0, 64.0, 128.0, 256.0, 512.0),) * 3

# Fine-tuning from the COCO weights: torchvision's detection fine-tuning tutorial (SGD, lr 0.005 for batches of
# 2, momentum 0.9, weight decay 5e-4) with its StepLR(3, 0.1) over epochs, after the general warmup.
FINETUNE = TUTORIAL_FINETUNE


def _build(
    body: nn.Module, num_classes: int, min_size: int, max_size: int, options: dict[str, Any]
) -> FasterRCNN:
    """FasterRCNN on ``body`` with torchvision's defaults under ``options``; ``model.preprocess`` set."""
    options = {**_TORCHVISION, "input_size": (int(min_size), int(min_size)), **options}
    options.setdefault("pre_nms_topk", options.get("rpn_post_nms_top_n_test", 1000) * int(num_classes))
    model = FasterRCNN(body, num_classes, **options)
    model.preprocess = torchvision_preprocess(min_size, max_size)
    return model


@register_model("fasterrcnn_resnet50_fpn")
def fasterrcnn_resnet50_fpn(
    num_classes: int = NUM_COCO_CLASSES,
    *,
    min_size: int = 800,
    max_size: int = 1333,
    trainable_backbone_layers: int = 3,
    frozen_batchnorm: bool = True,
    frozen_batchnorm_eps: float = 0.0,
    **kwargs: Any,
) -> FasterRCNN:
    """torchvision's ``fasterrcnn_resnet50_fpn`` (Faster R-CNN, ResNet-50-FPN; COCO box AP 37.0 with
    ``weights="coco"``).

    Args:
        num_classes: object classes (COCO: 90, labels = COCO category id - 1).
        min_size, max_size: torchvision's resize (``model.preprocess``) and the default input size.
        trainable_backbone_layers: ResNet stages trained, from the last (0-5; torchvision's default 3).
        frozen_batchnorm: the backbone's BatchNorm frozen (torchvision's pretrained configuration); False:
            trainable BatchNorm (torchvision's from-scratch model).
        frozen_batchnorm_eps: the frozen BatchNorm's eps (0 for torchvision's COCO weights).
        **kwargs: :class:`~detforge.models.faster_rcnn.FasterRCNN` options (post-processing, RPN, sampling).
    """
    body = resnet50_body((1, 2, 3, 4), frozen_batchnorm_eps if frozen_batchnorm else None, trainable_backbone_layers)
    return _build(body, num_classes, min_size, max_size, kwargs)


@register_model("fasterrcnn_resnet50_fpn_v2")
def fasterrcnn_resnet50_fpn_v2(
    num_classes: int = NUM_COCO_CLASSES,
    *,
    min_size: int = 800,
    max_size: int = 1333,
    trainable_backbone_layers: int = 3,
    frozen_batchnorm: bool = True,
    **kwargs: Any,
) -> FasterRCNN:
    """torchvision's ``fasterrcnn_resnet50_fpn_v2`` (Li et al. 2021's improved Faster R-CNN; COCO box AP 46.7):
    BatchNorm in the backbone, the FPN and the box head (four 3x3 conv 256 + BatchNorm, one FC 1024), two-conv
    RPN head.

    Args: as :func:`fasterrcnn_resnet50_fpn`. ``frozen_batchnorm`` (eps 1e-5) changes no prediction;
    torchvision's v2 trains its backbone's BatchNorm (``frozen_batchnorm=False``), detforge freezes it by
    default as for the v1 model, since fine-tuning batches of a few images give poor statistics.
    """
    body = resnet50_body((1, 2, 3, 4), 1e-5 if frozen_batchnorm else None, trainable_backbone_layers)
    options = {"fpn_norm": "batch", "rpn_conv_depth": 2, "box_head": "conv_fc", **kwargs}
    return _build(body, num_classes, min_size, max_size, options)


def _mobilenet(
    num_classes: int,
    min_size: int,
    max_size: int,
    trainable: int,
    frozen_batchnorm: bool,
    options: dict[str, Any],
) -> FasterRCNN:
    body = mobilenet_v3_large_body(frozen_batchnorm, trainable)
    options = {
        "simple_pyramid": False,
        "anchor_sizes": _MOBILENET_ANCHORS,
        "rpn_score_thresh": 0.05,
        **options,
    }
    return _build(body, num_classes, min_size, max_size, options)


@register_model("fasterrcnn_mobilenet_v3_large_fpn")
def fasterrcnn_mobilenet_v3_large_fpn(
    num_classes: int = NUM_COCO_CLASSES,
    *,
    min_size: int = 800,
    max_size: int = 1333,
    trainable_backbone_layers: int = 3,
    frozen_batchnorm: bool = True,
    **kwargs: Any,
) -> FasterRCNN:
    """torchvision's ``fasterrcnn_mobilenet_v3_large_fpn`` (COCO box AP 32.8): MobileNetV3-Large layers 13
    and 16 (both stride 32) + "pool" (64), anchors 32-512 x (0.5, 1, 2) on every level, RPN score threshold
    0.05.

    Args:
        num_classes, min_size, max_size, **kwargs: as :func:`fasterrcnn_resnet50_fpn`.
        trainable_backbone_layers: MobileNetV3 stages trained, from the last (0-6; torchvision's default 3).
        frozen_batchnorm: frozen BatchNorm (eps 1e-5, torchvision's pretrained configuration); False:
            trainable BatchNorm (eps 1e-3).
    """
    return _mobilenet(num_classes, min_size, max_size, trainable_backbone_layers, frozen_batchnorm, kwargs)


@register_model("fasterrcnn_mobilenet_v3_large_320_fpn")
def fasterrcnn_mobilenet_v3_large_320_fpn(
    num_classes: int = NUM_COCO_CLASSES,
    *,
    min_size: int = 320,
    max_size: int = 640,
    trainable_backbone_layers: int = 3,
    frozen_batchnorm: bool = True,
    **kwargs: Any,
) -> FasterRCNN:
    """torchvision's ``fasterrcnn_mobilenet_v3_large_320_fpn`` (COCO box AP 22.8): as
    :func:`fasterrcnn_mobilenet_v3_large_fpn` at 320 px (longer side at most 640) with 150 proposals per
    image at inference (150 per level before NMS)."""
    options = {"rpn_pre_nms_top_n_test": 150, "rpn_post_nms_top_n_test": 150, **kwargs}
    return _mobilenet(num_classes, min_size, max_size, trainable_backbone_layers, frozen_batchnorm, options)


# ---------------------------------------------------------------------------------------------- weights
_RENAMES = (
    ("backbone.body.", "features.body."),
    ("backbone.fpn.", "features.fpn.fpn."),
    ("rpn.head.", "rpn_head."),
    ("roi_heads.box_predictor.", "box_predictor."),
    ("roi_heads.box_head.", "box_head."),
)
_RPN_CONV = re.compile(r"^rpn_head\.conv\.(\d+)\.0\.")  # torchvision's conv.<i>.0 (Conv2dNormActivation)
_CONV_FC = re.compile(r"^box_head\.(\d+)\.")  # FastRCNNConvFCHead: 0-3 conv blocks, 4 flatten, 5 FC


def convert_faster_rcnn(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """torchvision Faster R-CNN state dict (any of the four models) -> detforge ``FasterRCNN`` state dict.

    Renames ``backbone.body`` / ``backbone.fpn`` / ``rpn.head`` / ``roi_heads.*``; the RPN convs
    (``conv.<i>.0``, or the legacy ``conv``) become ``conv.<2 i>`` (ReLUs between); the v2 box head's
    ``<i>`` conv blocks become ``convs.<i>`` and its FC layer ``5`` becomes ``fc``. BatchNorm's
    ``num_batches_tracked`` counters are left out (the model keeps its own).
    """
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        prefix = next((p for p in _RENAMES if key.startswith(p[0])), None)
        if prefix is None:
            raise KeyError(key)
        new = prefix[1] + key[len(prefix[0]) :]
        new = _RPN_CONV.sub(lambda m: f"rpn_head.conv.{2 * int(m.group(1))}.", new)
        if new in ("rpn_head.conv.weight", "rpn_head.conv.bias"):  # torchvision's RPNHead before version 2
            new = "rpn_head.conv.0." + new.rsplit(".", 1)[1]
        match = _CONV_FC.match(new)
        if match:
            index = int(match.group(1))
            new = ("box_head.fc." if index == 5 else f"box_head.convs.{index}.") + new[match.end() :]
        out[new] = value
    return out


def _register(name: str, enum: Any, min_size: int, max_size: int) -> None:
    meta = enum.meta
    register_weights(
        name,
        "coco",
        Weights(
            url=enum.url,
            sha256=enum.url.rsplit("-", 1)[-1].split(".")[0],
            class_names=COCO_CLASS_NAMES,
            category_ids=COCO_CATEGORY_IDS,
            preprocess=torchvision_preprocess(min_size, max_size),
            licence="BSD-3-Clause",
            metrics={"coco/box_ap": float(meta["_metrics"]["COCO-val2017"]["box_map"])},
            convert=convert_faster_rcnn,
            recipe=FINETUNE,
            source="torchvision",
            num_params=int(meta["num_params"]),
        ),
    )


_register("fasterrcnn_resnet50_fpn", FasterRCNN_ResNet50_FPN_Weights.COCO_V1, 800, 1333)
_register("fasterrcnn_resnet50_fpn_v2", FasterRCNN_ResNet50_FPN_V2_Weights.COCO_V1, 800, 1333)
_register("fasterrcnn_mobilenet_v3_large_fpn", FasterRCNN_MobileNet_V3_Large_FPN_Weights.COCO_V1, 800, 1333)
_register(
    "fasterrcnn_mobilenet_v3_large_320_fpn", FasterRCNN_MobileNet_V3_Large_320_FPN_Weights.COCO_V1, 320, 640
)
