"""Registered Faster R-CNN models.

- ``faster_rcnn_<timm name>``: any timm backbone + FPN, built on demand (``create_model("faster_rcnn_resnet18",
  num_classes=20)``); by default the backbone's levels at strides 4-32 (timm ``out_indices=(1, 2, 3, 4)``, the
  last four for models with four levels), as torchvision's ResNet-FPN, plus the max-pooled "pool" level
  (``faster_rcnn_resnet18`` is built by the prefix; it is not listed, so the conformance test, which runs
  every listed model on 2 CI cores, covers the family through ``faster_rcnn_n``);
- ``faster_rcnn_n``: the small CPU default (mobilenetv3_small_100, 64-channel FPN, strides 8-64, 256-wide
  box head, 300 inference proposals).
"""

from __future__ import annotations

from typing import Any

from detforge.models.faster_rcnn.model import FasterRCNN
from detforge.models.registry import register_model, register_prefix
from detforge.models.zoo import _backbone

__all__ = ["build_faster_rcnn", "faster_rcnn_n"]

_STRIDES_4_TO_32 = (1, 2, 3, 4)


# Faster R-CNN on any backbone: its two-FC box head diverges early at the general 3e-3. faster_rcnn_resnet18 in
# a 3-minute budget on synthetic:1024, 128 px (64 RoIs per image, 256-wide head): 0.168 mAP at 1e-3 against
# 0.039 at 3e-3 and 0.140 at 5e-4.
@register_prefix("faster_rcnn_", recipe={"model.lr": 1e-3})
def build_faster_rcnn(
    timm_name: str,
    num_classes: int = 80,
    pretrained: bool | str = False,
    out_indices: tuple[int, ...] | None = None,
    backbone_kwargs: dict[str, Any] | None = None,
    **kwargs: Any,
) -> FasterRCNN:
    """Faster R-CNN on the timm backbone ``timm_name`` (``out_indices`` None: strides 4-32 levels).

    ``backbone_kwargs``: the backbone's further options (``drop_rate``, ``drop_path_rate``, ``extra_kwargs``;
    other keys go to ``timm.create_model``)."""
    if out_indices is not None:
        return FasterRCNN(
            _backbone(timm_name, pretrained, out_indices, backbone_kwargs), num_classes, **kwargs
        )
    try:
        backbone = _backbone(timm_name, pretrained, _STRIDES_4_TO_32, backbone_kwargs)
        return FasterRCNN(backbone, num_classes, **kwargs)
    except (IndexError, AssertionError, ValueError) as err:  # a 4-level model (ConvNeXt, Swin): (0, 1, 2, 3)
        if "out_indices" in str(err) or isinstance(err, IndexError | AssertionError):
            backbone = _backbone(timm_name, pretrained, (0, 1, 2, 3), backbone_kwargs)
            return FasterRCNN(backbone, num_classes, **kwargs)
        raise


@register_model("faster_rcnn_n")
def faster_rcnn_n(num_classes: int = 80, pretrained: bool | str = False, **kwargs: Any) -> FasterRCNN:
    """Small CPU Faster R-CNN: mobilenetv3_small_100 (strides 8, 16, 32 + pool 64), 64-channel FPN, anchors
    32-256, 256-wide box head, 600 / 300 proposals (train / inference), 128 RoIs per image; 256 px input."""
    options: dict[str, Any] = dict(
        out_indices=(2, 3, 4),
        fpn_channels=64,
        anchor_sizes=((32,), (64,), (128,), (256,)),
        representation_size=256,
        rpn_pre_nms_top_n_train=600,
        rpn_post_nms_top_n_train=600,
        rpn_pre_nms_top_n_test=300,
        rpn_post_nms_top_n_test=300,
        box_batch_size_per_image=128,
        input_size=(256, 256),
    )
    options.update(kwargs)
    return build_faster_rcnn("mobilenetv3_small_100", num_classes, pretrained, **options)
