"""Detection losses. Every loss is an ``nn.Module`` with ``forward(pred, target, weight=None)``.

Pick one by name with ``get_loss("giou", box_format="ltrb")``; ``list_losses()`` shows the names.
"""

from detforge.losses.registry import get_loss, is_loss, list_losses, register_loss  # isort: skip
from detforge.losses.centerness import centerness_targets, compute_centerness
from detforge.losses.focal import FocalLoss, labels_to_one_hot
from detforge.losses.iou import CIoULoss, DIoULoss, GIoULoss, IoULoss, ltrb_to_origin_xyxy, paired_box_iou
from detforge.losses.quality_focal import QualityFocalLoss, quality_targets
from detforge.losses.simple import BCEWithLogitsLoss, L1Loss, SmoothL1Loss
from detforge.losses.uncertainty import UncertaintyLoss

__all__ = [
    "BCEWithLogitsLoss",
    "CIoULoss",
    "DIoULoss",
    "FocalLoss",
    "GIoULoss",
    "IoULoss",
    "L1Loss",
    "QualityFocalLoss",
    "SmoothL1Loss",
    "UncertaintyLoss",
    "centerness_targets",
    "compute_centerness",
    "get_loss",
    "is_loss",
    "labels_to_one_hot",
    "list_losses",
    "ltrb_to_origin_xyxy",
    "paired_box_iou",
    "quality_targets",
    "register_loss",
]
