"""torchvision's ``ssdlite320_mobilenet_v3_large`` as a detforge :class:`~detforge.models.ssd.SSD`.

The builder's defaults are torchvision's COCO configuration: MobileNetV3-Large with the reduced tail (what
torchvision builds when no ImageNet backbone is given, and so what its COCO weights hold), BatchNorm eps 1e-3 /
momentum 0.03, 6 default boxes per location (aspect ratios 2 and 3, scales 0.2-0.95, clipped), box weights
(10, 10, 5, 5), IoU 0.5 matching, 3:1 hard negatives; score threshold 0.001, 300 candidates per class, NMS
0.55, 300 detections; images resized to 320 x 320 and normalised to [-1, 1] (``model.preprocess``). The
softmax head keeps torchvision's 91 columns (background first), so the COCO weights load tensor for tensor;
detforge label k is torchvision's label k + 1.
"""

from __future__ import annotations

import re
from typing import Any

from torch import Tensor

from detforge.models.preprocess import Preprocess
from detforge.models.registry import register_model
from detforge.models.ssd import SSD
from detforge.models.torchvision_zoo.coco import COCO_CATEGORY_IDS, COCO_CLASS_NAMES, NUM_COCO_CLASSES
from detforge.models.weights import Weights, register_weights

__all__ = ["SSDLITE_PREPROCESS", "convert_ssdlite", "ssdlite320_mobilenet_v3_large"]

SSDLITE_PREPROCESS = Preprocess(
    resize="fixed", fixed_size=(320, 320), size_divisible=1, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)
)
"""torchvision's SSDlite transform: both sides to 320, no padding, (x - 0.5) / 0.5."""


@register_model("ssdlite320_mobilenet_v3_large")
def ssdlite320_mobilenet_v3_large(num_classes: int = NUM_COCO_CLASSES, **kwargs: Any) -> SSD:
    """SSDlite 320 with a MobileNetV3-Large body (torchvision's builder; COCO box AP 21.3 with ``weights=
    "coco"``). ``kwargs``: :class:`~detforge.models.ssd.SSD`'s options (``reduced_tail``, ``pretrained``,
    ``iou_thresh``, ``score_thresh``, ...), torchvision's values by default."""
    model = SSD(num_classes, backbone="mobilenet_v3_large", **kwargs)
    model.preprocess = SSDLITE_PREPROCESS
    return model


_HEADS = {
    "head.classification_head.module_list.": "head.cls_blocks.",
    "head.regression_head.module_list.": "head.box_blocks.",
}
_BODY = re.compile(r"backbone\.features\.(\d+)\.(\d+)\.(.*)")


def convert_ssdlite(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """torchvision ``SSD`` (SSDlite, MobileNetV3) state dict -> :class:`~detforge.models.ssd.SSD`'s.

    torchvision splits the MobileNetV3 ``features`` at the C4 block's expansion (``backbone.features.0``: the
    layers up to and including it, ``backbone.features.1``: the rest of that block, then the later layers);
    detforge keeps ``features`` whole as ``backbone.body`` and taps it in ``forward``. The extra blocks keep
    their names, the heads' ``module_list`` become ``cls_blocks`` / ``box_blocks``; the class layers keep all
    91 columns (the background is the softmax's column 0)."""
    first = [int(m.group(2)) for k in state if (m := _BODY.fullmatch(k)) and m.group(1) == "0"]
    if not first:
        raise KeyError("backbone.features.0.0.0.weight")
    c4 = max(first)  # the C4 expansion conv is the last module of the first part
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        body = _BODY.fullmatch(key)
        if body is not None:
            part, index, rest = int(body.group(1)), int(body.group(2)), body.group(3)
            if part == 0:
                name = f"{index}.{rest}" if index < c4 else f"{c4}.block.0.{rest}"
            elif index == 0:  # the C4 block after its expansion (a slice: it keeps the names block.1, ...)
                name = f"{c4}.block.{rest}"
            else:
                name = f"{c4 + index}.{rest}"
            out[f"backbone.body.{name}"] = value
            continue
        prefix = next((p for p in _HEADS if key.startswith(p)), None)
        out[key if prefix is None else _HEADS[prefix] + key[len(prefix) :]] = value
    return out


register_weights(
    "ssdlite320_mobilenet_v3_large",
    "coco",
    Weights(
        url="https://download.pytorch.org/models/ssdlite320_mobilenet_v3_large_coco-a79551df.pth",
        sha256="a79551df",
        class_names=COCO_CLASS_NAMES,
        category_ids=COCO_CATEGORY_IDS,
        preprocess=SSDLITE_PREPROCESS,
        licence="BSD-3-Clause",
        metrics={"coco/box_ap": 21.3},
        convert=convert_ssdlite,
        model_kwargs={"reduced_tail": True},
        # torchvision's recipe (SGD momentum 0.9, weight decay 4e-5, cosine; lr 0.15 for 8 x 24 images)
        # scaled linearly to a batch of 16 (0.0125) and a little below for fine-tuning; at its 320 px.
        recipe={
            "model.optimizer": "sgd",
            "model.lr": 0.01,
            "model.optimizer_kwargs": {"momentum": 0.9},
            "model.weight_decay": 4e-5,
            "data.imgsz": 320,
        },
        source="torchvision",
        num_params=3440060,
    ),
)
