"""IoU-family box regression losses: IoU (-log IoU or 1 - IoU), GIoU, DIoU and CIoU.

Each loss compares prediction ``i`` with target ``i`` (paired, not all-pairs). Boxes are xyxy pixels by
default. With ``box_format="ltrb"`` both inputs are FCOS distances ``(l, t, r, b) >= 0`` from the same
location; they are placed around the origin as ``(-l, -t, r, b)``, which gives exactly FCOS's anchor-point-free
IoU. GIoU and DIoU use torchvision's losses; CIoU adds ``eps`` inside its aspect-ratio term so zero-height
boxes keep a finite gradient (torchvision's ``complete_box_iou_loss`` returns NaN there).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn
from torchvision.ops import distance_box_iou_loss, generalized_box_iou_loss

from detforge.boxes import ltrb_to_origin_xyxy  # re-exported: models import it from here
from detforge.losses._reduce import Reduction, check_reduction, check_same_shape, reduce_loss
from detforge.losses.registry import register_loss

__all__ = [
    "CIoULoss",
    "DIoULoss",
    "GIoULoss",
    "IoULoss",
    "LossBoxFormat",
    "ltrb_to_origin_xyxy",
    "paired_box_iou",
]

LossBoxFormat = Literal["xyxy", "ltrb"]
_BOX_FORMATS = ("xyxy", "ltrb")
_IOU_MODES = ("log", "linear")


def paired_box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """IoU of ``boxes1[i]`` with ``boxes2[i]`` (both Tensor[..., 4] xyxy) -> Tensor[...].

    Zero-area pairs give 0, with a finite gradient.
    """
    wh = (
        torch.minimum(boxes1[..., 2:], boxes2[..., 2:]) - torch.maximum(boxes1[..., :2], boxes2[..., :2])
    ).clamp(min=0)  # [..., 2]
    inter = wh[..., 0] * wh[..., 1]
    area1 = (boxes1[..., 2] - boxes1[..., 0]) * (boxes1[..., 3] - boxes1[..., 1])
    area2 = (boxes2[..., 2] - boxes2[..., 0]) * (boxes2[..., 3] - boxes2[..., 1])
    return inter / (area1 + area2 - inter + eps)


class _PairedBoxLoss(nn.Module):
    """Shared input checks, ltrb handling, weighting and reduction of the IoU-family losses."""

    def __init__(
        self, box_format: LossBoxFormat = "xyxy", reduction: Reduction = "mean", eps: float = 1e-7
    ) -> None:
        super().__init__()
        check_reduction(reduction)
        if box_format not in _BOX_FORMATS:
            raise ValueError(f"box_format must be one of {_BOX_FORMATS}, got {box_format!r}")
        if eps <= 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.box_format = box_format
        self.reduction = reduction
        self.eps = float(eps)

    def _elementwise(self, pred: Tensor, target: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, pred: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        """Loss of ``pred[i]`` against ``target[i]``.

        Args:
            pred: Tensor[N, 4], xyxy pixels or ltrb distances (see ``box_format``).
            target: Tensor[N, 4], same format.
            weight: optional per-box weight Tensor[N] (e.g. FCOS centerness targets).

        Returns:
            Tensor[] for ``mean`` / ``sum`` (a connected zero when N == 0), Tensor[N] for ``none``.
        """
        name = type(self).__name__
        check_same_shape(name, pred, target)
        if pred.shape[-1] != 4:
            raise ValueError(
                f"{name}: boxes must have 4 coordinates in the last dim, got shape {tuple(pred.shape)}"
            )
        if pred.dtype != torch.float64:
            pred = pred.float()  # half precision would round eps to zero: IoU terms run in float32
        target = target.to(pred.dtype)
        if self.box_format == "ltrb":
            pred, target = ltrb_to_origin_xyxy(pred), ltrb_to_origin_xyxy(target)
        return reduce_loss(self._elementwise(pred, target), self.reduction, weight, name)

    compute = forward

    def extra_repr(self) -> str:
        return f"box_format={self.box_format!r}, reduction={self.reduction!r}"


@register_loss("iou")
class IoULoss(_PairedBoxLoss):
    """IoU loss: ``-log(IoU)`` (``mode="log"``, UnitBox / FCOS) or ``1 - IoU`` (``mode="linear"``).

    Disjoint boxes get no gradient from plain IoU; use GIoU/DIoU/CIoU when predictions may miss entirely.
    """

    def __init__(
        self,
        mode: Literal["log", "linear"] = "log",
        box_format: LossBoxFormat = "xyxy",
        reduction: Reduction = "mean",
        eps: float = 1e-7,
    ) -> None:
        super().__init__(box_format=box_format, reduction=reduction, eps=eps)
        if mode not in _IOU_MODES:
            raise ValueError(f"mode must be one of {_IOU_MODES}, got {mode!r}")
        self.mode = mode

    def _elementwise(self, pred: Tensor, target: Tensor) -> Tensor:
        iou = paired_box_iou(pred, target, self.eps)  # [N]
        return -iou.clamp(min=self.eps).log() if self.mode == "log" else 1.0 - iou

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, " + super().extra_repr()


@register_loss("giou")
class GIoULoss(_PairedBoxLoss):
    """Generalized IoU loss ``1 - GIoU``, equal to ``torchvision.ops.generalized_box_iou_loss``."""

    def _elementwise(self, pred: Tensor, target: Tensor) -> Tensor:
        return generalized_box_iou_loss(pred, target, reduction="none", eps=self.eps)


@register_loss("diou")
class DIoULoss(_PairedBoxLoss):
    """Distance IoU loss, equal to ``torchvision.ops.distance_box_iou_loss``."""

    def _elementwise(self, pred: Tensor, target: Tensor) -> Tensor:
        return distance_box_iou_loss(pred, target, reduction="none", eps=self.eps)


@register_loss("ciou")
class CIoULoss(_PairedBoxLoss):
    """Complete IoU loss: DIoU plus the aspect-ratio term ``alpha * v``.

    Equals ``torchvision.ops.complete_box_iou_loss`` on boxes with positive height; ``eps`` in the
    width/height ratio keeps zero-height boxes finite.
    """

    def _elementwise(self, pred: Tensor, target: Tensor) -> Tensor:
        diou = distance_box_iou_loss(pred, target, reduction="none", eps=self.eps)  # [N]
        iou = paired_box_iou(pred, target, self.eps)  # [N]
        w_pred, h_pred = pred[..., 2] - pred[..., 0], pred[..., 3] - pred[..., 1]
        w_gt, h_gt = target[..., 2] - target[..., 0], target[..., 3] - target[..., 1]
        v = (4 / math.pi**2) * (
            torch.atan(w_gt / (h_gt + self.eps)) - torch.atan(w_pred / (h_pred + self.eps))
        ) ** 2
        with torch.no_grad():
            alpha = v / (1 - iou + v + self.eps)
        return diou + alpha * v
