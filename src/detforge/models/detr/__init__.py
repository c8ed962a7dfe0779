"""DETR (Carion et al. 2020): set prediction with a transformer, no NMS; registered builders.

Registered: ``detr_<timm name>`` for any timm backbone (the paper's model: C5, width 256, 6 + 6 layers,
100 queries) and ``detr_n`` (mobilenetv3_small_100 at stride 16, width 128, 2 + 2 layers, 100 queries,
256 px), small enough for CPUs and the conformance test; the RT-DETR-like fast-converging variant
``rtdetr_<timm name>`` and ``rtdetr_n`` (:mod:`detforge.models.detr.rtdetr`).
"""

from __future__ import annotations

from typing import Any

from detforge.models.detr.heads import MLP, SetPredictionHead
from detforge.models.detr.model import DETR, backbone_levels
from detforge.models.detr.position import SinePositionEncoding, padding_mask
from detforge.models.detr.rtdetr import RTDETR, build_rtdetr, rtdetr_n
from detforge.models.detr.transformer import DETRDecoderLayer, DETREncoderLayer, DETRTransformer
from detforge.models.registry import register_model, register_prefix

__all__ = [
    "DETR",
    "DETRDecoderLayer",
    "DETREncoderLayer",
    "DETRTransformer",
    "MLP",
    "RTDETR",
    "SetPredictionHead",
    "SinePositionEncoding",
    "backbone_levels",
    "build_detr",
    "build_rtdetr",
    "detr_n",
    "padding_mask",
    "rtdetr_n",
]


@register_prefix("detr_")
def build_detr(
    timm_name: str,
    num_classes: int = 80,
    pretrained: bool | str = False,
    backbone_level: int = -1,
    backbone_kwargs: dict[str, Any] | None = None,
    **kwargs: Any,
) -> DETR:
    """DETR on the timm backbone ``timm_name`` (its level ``backbone_level``, C5 by default);
    ``backbone_kwargs`` as in :func:`detforge.models.zoo.build_fcos`."""
    from detforge.models.zoo import _backbone

    config = _backbone(timm_name, pretrained, backbone_levels(backbone_level), backbone_kwargs)
    return DETR(config, num_classes, backbone_level=backbone_level, **kwargs)


# DETR's optimiser: AdamW lr 1e-4 (the backbone at 0.1x: the model's lr_multipliers), weight decay 1e-4,
# gradient norm clipped at 0.1.
@register_model(
    "detr_n", recipe={"model.lr": 1e-4, "model.weight_decay": 1e-4, "trainer.gradient_clip_val": 0.1}
)
def detr_n(num_classes: int = 80, pretrained: bool | str = False, **kwargs: Any) -> DETR:
    """CPU-sized DETR: mobilenetv3_small_100 at stride 16 (48 channels), width 128, 4 heads, feed-forward
    512, 2 encoder + 2 decoder layers, 100 queries, no dropout; 256 px default input."""
    options: dict[str, Any] = dict(
        backbone_level=-2,
        hidden_dim=128,
        num_heads=4,
        ffn_dim=512,
        num_encoder_layers=2,
        num_decoder_layers=2,
        dropout=0.0,
        input_size=(256, 256),
    )
    options.update(kwargs)
    return build_detr("mobilenetv3_small_100", num_classes, pretrained, **options)
