"""torchvision's ``fcos_resnet50_fpn`` (COCO box AP 39.2) as a detforge :class:`~detforge.models.fcos.FCOS`.

The same network, tensor for tensor: timm's ``resnet50`` (torchvision's module names and architecture) with
its last three stages, torchvision's ``FeaturePyramidNetwork`` with P6 / P7 from P5 (``LastLevelP6P7(256,
256)``), and the FCOS head with a bias in every tower convolution before GroupNorm(32) and ``relu(x) *
anchor size`` box distances (``box_activation="relu"``, ``head_conv_bias=True``). The detections and losses
are torchvision's too: locations at torchvision's anchor centres (``points="torchvision"``: ``fx * (W //
w)``, so P6 / P7 of an 800-row input step 61 / 114 px, not 64 / 128), its matching and loss normalisation
(``loss_convention="torchvision"``, loss parts ``classification``, ``bbox_regression``, ``bbox_ctrness``),
scores ``sqrt(sigmoid(cls) * sigmoid(ctr))``, threshold 0.2, the best 1000 per level, NMS 0.6, 100 per image.

Labels: detforge label k is torchvision's k + 1 (COCO category id k + 1); :func:`convert_fcos_resnet50_fpn`
drops the background row of the class layer, which a sigmoid head never uses as a class.

Backbone training as torchvision's builder: with pretrained weights (``pretrained=...`` here, the ``coco``
weights) every BatchNorm is frozen (``FrozenBatchNorm2d``) and ``trainable_backbone_layers=3`` (the stem and
``layer1`` frozen); from scratch BatchNorm trains and so does every layer.
"""

from __future__ import annotations

import re
from typing import Any

from timm.layers import freeze_batch_norm_2d
from torch import Tensor

from detforge.models.backbone import FeatureBackboneConfig, freeze_stages
from detforge.models.fcos import FCOS
from detforge.models.frozen_norm import fuse_frozen_batchnorm
from detforge.models.preprocess import Preprocess
from detforge.models.registry import register_model
from detforge.models.torchvision_zoo.coco import COCO_CATEGORY_IDS, COCO_CLASS_NAMES, NUM_COCO_CLASSES
from detforge.models.weights import Weights, register_weights

__all__ = ["convert_fcos_resnet50_fpn", "fcos_resnet50_fpn"]

# trainable_backbone_layers -> the largest output stride of the frozen stem + stages (freeze_stages)
_FROZEN_STRIDE = {0: 32, 1: 16, 2: 8, 3: 4, 4: 2}

_RENAMES = (
    ("backbone.body.", "features.body."),
    ("backbone.fpn.extra_blocks.p6.", "features.fpn.fpn.extra_blocks.convs.0."),
    ("backbone.fpn.extra_blocks.p7.", "features.fpn.fpn.extra_blocks.convs.1."),
    ("backbone.fpn.", "features.fpn.fpn."),
    ("head.classification_head.conv.", "head.cls_tower."),
    ("head.classification_head.cls_logits.", "head.cls_logits."),
    ("head.regression_head.conv.", "head.box_tower."),
    ("head.regression_head.bbox_reg.", "head.box_reg."),
    ("head.regression_head.bbox_ctrness.", "head.centerness."),
)


def convert_fcos_resnet50_fpn(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """torchvision's ``FCOS`` state dict (``fcos_resnet50_fpn``) -> the detforge model's.

    Renames the backbone (``backbone.body`` -> ``features.body``: timm's ResNet has torchvision's names), the
    FPN (``extra_blocks.p6`` / ``p7`` -> ``extra_blocks.convs.0`` / ``1``) and the head (``classification_head
    .conv`` -> ``cls_tower``, ``regression_head.bbox_reg`` -> ``box_reg``, ...), drops BatchNorm's
    ``num_batches_tracked`` counters and the class layer's background row (torchvision's index 0; detforge
    label k = torchvision label k + 1). Keys it does not know are kept as they are, so loading names them.
    """
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        new = key
        for old, replacement in _RENAMES:
            if key.startswith(old):
                new = replacement + key[len(old) :]
                break
        if re.fullmatch(r"head\.cls_logits\.(weight|bias)", new):
            value = value[1:]  # [91, ...] -> [90, ...]: no background class in a sigmoid head
        out[new] = value
    return out


@register_model("fcos_resnet50_fpn")
def fcos_resnet50_fpn(
    num_classes: int = NUM_COCO_CLASSES,
    pretrained: bool | str = False,
    trainable_backbone_layers: int | None = None,
    frozen_batchnorm: bool | None = None,
    min_size: int = 800,
    max_size: int = 1333,
    **kwargs: Any,
) -> FCOS:
    """torchvision's ``fcos_resnet50_fpn`` as a detforge FCOS (see the module docstring); ``weights="coco"``
    in :func:`~detforge.models.registry.create_model` loads torchvision's COCO weights.

    Args:
        num_classes: object classes (90: COCO's category ids 1..90 as labels 0..89).
        pretrained: the ResNet-50's ImageNet weights: False, True (timm's hub) or a local file (timm's or
            torchvision's ``resnet50-*.pth``).
        trainable_backbone_layers: ResNet stages that train, from the last (torchvision's meaning, 0..5):
            None gives 3 with pretrained weights (stem and ``layer1`` frozen), else 5.
        frozen_batchnorm: every backbone BatchNorm frozen (``FrozenBatchNorm2d``); None: with pretrained
            weights (torchvision's choice of ``norm_layer``).
        min_size, max_size: torchvision's resize of :meth:`~detforge.models.base.Detector.predict`
            (shorter side to ``min_size``, longer side at most ``max_size``, padded to a multiple of 32).
        **kwargs: :class:`~detforge.models.fcos.FCOS` options and post-processing settings; the defaults are
            torchvision's (score 0.2, NMS 0.6, 1000 candidates per level, 100 detections).

    Returns:
        the FCOS: ``forward(images [B, 3, H, W] in [0, 1])`` -> ``cls_logits`` [B, P, C], ``box_reg``
        [B, P, 4], ``centerness`` [B, P], ``feat_sizes``, ``image_size``.
    """
    trained = pretrained not in (False, None, "")
    layers = (3 if trained else 5) if trainable_backbone_layers is None else int(trainable_backbone_layers)
    if not 0 <= layers <= 5:
        raise ValueError(f"trainable_backbone_layers must be in 0..5, got {trainable_backbone_layers}")
    options: dict[str, Any] = dict(
        fpn_channels=256,
        head_num_convs=4,
        extra_levels=2,
        center_sampling_radius=1.5,
        head_norm="GN",
        focal_alpha=0.25,
        focal_gamma=2.0,
        cls_loss_fn="focal",
        reg_loss_fn="giou",
        box_activation="relu",
        head_conv_bias=True,
        points="torchvision",
        loss_convention="torchvision",
        input_size=(min_size, min_size),
        score_thresh=0.2,
        nms_thresh=0.6,
        pre_nms_topk=1000,
        max_detections_per_image=100,
    )
    options.update(kwargs)
    model = FCOS(FeatureBackboneConfig("resnet50", pretrained=pretrained), num_classes, **options)
    body = model.features.body
    if layers < 5:
        freeze_stages(body, _FROZEN_STRIDE[layers])
    if trained if frozen_batchnorm is None else frozen_batchnorm:
        freeze_batch_norm_2d(body)
        fuse_frozen_batchnorm(body)
    model.preprocess = Preprocess(resize="shortest_edge", min_size=min_size, max_size=max_size)
    return model


register_weights(
    "fcos_resnet50_fpn",
    "coco",
    Weights(
        url="https://download.pytorch.org/models/fcos_resnet50_fpn_coco-99b0c9b7.pth",
        sha256="99b0c9b7",
        class_names=COCO_CLASS_NAMES,
        category_ids=COCO_CATEGORY_IDS,
        preprocess=Preprocess(resize="shortest_edge", min_size=800, max_size=1333, size_divisible=32),
        licence="BSD-3-Clause",
        metrics={"coco/box_ap": 39.2},
        convert=convert_fcos_resnet50_fpn,
        model_kwargs={"trainable_backbone_layers": 3, "frozen_batchnorm": True},
        # torchvision trained it with SGD (momentum 0.9, weight decay 1e-4) at lr 0.01 for 16 images a step;
        # fine-tuning batches are smaller: 0.005 is that rate scaled to 8 images; the step schedule of
        # torchvision's fine-tuning tutorial, StepLR(3, 0.1) over epochs.
        recipe={
            "model.optimizer": "sgd",
            "model.lr": 0.005,
            "model.optimizer_kwargs": {"momentum": 0.9},
            "model.weight_decay": 1e-4,
            "model.scheduler": "step",
            "model.scheduler_kwargs": {"step_size": 3, "gamma": 0.1},
        },
        source="torchvision",
        num_params=32_267_295,
    ),
)
