"""Training losses of the edge detectors, built from ``detforge.assigners`` and ``detforge.losses``.

- ``fcos_uncertainty_loss`` (Nexus): FCOS assignment on three scales, focal classification, GIoU on the
  (l, t, r, b) boxes, Gaussian NLL of the box sides in log-stride units with the predicted log-variance, and
  centerness BCE.
- ``single_scale_face_loss`` (Phantom): centre-cell assignment on the stride-4 map, focal on the face map and
  smooth L1 on (dx, dy, log w, log h).
- ``yolox_loss`` (NightVision): SimOTA assignment, BCE on objectness and IoU-weighted class targets, GIoU on
  the decoded boxes.

Every function takes the whole batch at once; the totals are normalised by the number of positives (at least
one), so an image without objects trains the background only and never divides by zero.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from detforge.assigners import FCOSAssigner
from detforge.assigners.simota import SimOTAAssigner
from detforge.assigners.single_scale import SingleScaleAssigner
from detforge.losses import BCEWithLogitsLoss, FocalLoss, GIoULoss, SmoothL1Loss, UncertaintyLoss
from detforge.models.fcos import default_regress_ranges
from detforge.models.pyramid_detector import check_labels
from detforge.targets import pad_targets

__all__ = ["fcos_uncertainty_loss", "nexus_regress_ranges", "single_scale_face_loss", "yolox_loss"]

_focal = FocalLoss(alpha=0.25, gamma=2.0, reduction="sum")
_giou_ltrb = GIoULoss(box_format="ltrb", reduction="sum")
_giou_xyxy = GIoULoss(box_format="xyxy", reduction="sum")
_uncertainty = UncertaintyLoss(reduction="sum")
_bce_sum = BCEWithLogitsLoss(reduction="sum")
_smooth_l1 = SmoothL1Loss(beta=1 / 9, reduction="sum")


def nexus_regress_ranges(strides: list[int]) -> list[tuple[float, float]]:
    """FCOS size ranges for the given strides (:func:`detforge.models.fcos.default_regress_ranges`): stride s
    takes boxes whose largest side distance is up to 8 s, the last level everything larger."""
    return list(default_regress_ranges(strides))


def _check_labels(labels: Tensor, mask: Tensor, num_classes: int, model: str) -> None:
    """:func:`detforge.models.pyramid_detector.check_labels` with the model's name in front of its message."""
    try:
        check_labels(labels, mask, num_classes)
    except ValueError as err:
        raise ValueError(f"{model}: {err}") from None


def fcos_uncertainty_loss(
    flat: dict, targets: list[dict], num_classes: int, strides: list[int]
) -> dict[str, Tensor]:
    """Nexus's loss.

    Args:
        flat: ``Nexus.flatten_outputs``: cls_logits [B, P, C], bbox_pred [B, P, 4] (l, t, r, b pixels),
            bbox_log_var [B, P, 4], centerness [B, P] logits, point_strides [P], feat_sizes.
        targets: per-image dicts with ``boxes`` (Tensor[N, 4] xyxy pixels) and ``labels`` (Tensor[N]).
    """
    cls = flat["cls_logits"]
    device = cls.device
    gt_boxes, gt_labels, gt_mask = pad_targets(targets, device=device)
    _check_labels(gt_labels, gt_mask, num_classes, "Nexus")
    assigner = FCOSAssigner(strides, nexus_regress_ranges(strides), center_sampling_radius=1.5)
    assigned = assigner(flat["feat_sizes"], gt_boxes, gt_labels, gt_mask)
    pos = assigned.labels >= 0  # [B, P]
    num_pos = pos.sum().float()
    norm = num_pos.clamp(min=1.0)

    cls_loss = _focal(cls.flatten(0, 1), assigned.labels.flatten()) / norm
    ctr_target = assigned.centerness[pos]  # [M]
    ctr_norm = ctr_target.sum().clamp(min=1e-6)
    pred_ltrb, target_ltrb = flat["bbox_pred"][pos], assigned.ltrb[pos]  # [M, 4]
    reg_loss = _giou_ltrb(pred_ltrb, target_ltrb, ctr_target) / ctr_norm
    stride = flat["point_strides"][None].expand_as(pos)[pos][:, None]  # [M, 1]
    log_pred = (pred_ltrb / stride).clamp(min=1e-4).log()  # [M, 4]
    log_target = (target_ltrb / stride).clamp(min=1e-4).log()  # [M, 4]
    uncertainty_loss = _uncertainty(log_pred, flat["bbox_log_var"][pos], log_target) / (4 * norm)
    centerness_loss = _bce_sum(flat["centerness"][pos], ctr_target) / norm
    total = cls_loss + reg_loss + centerness_loss + 0.5 * uncertainty_loss
    return {
        "loss": total,
        "cls_loss": cls_loss,
        "reg_loss": reg_loss,
        "centerness_loss": centerness_loss,
        "uncertainty_loss": uncertainty_loss,
        "num_pos": num_pos.detach(),
    }


def single_scale_face_loss(
    face_cls: Tensor, face_bbox: Tensor, targets: list[dict], stride: int
) -> dict[str, Tensor]:
    """Phantom's loss.

    Args:
        face_cls: Tensor[B, 1, H, W] logits. face_bbox: Tensor[B, 4, H, W] (dx, dy, log w, log h).
        targets: per-image dicts with ``boxes`` (Tensor[N, 4] xyxy pixels); every box is a face.
    """
    gt_boxes, _, gt_mask = pad_targets(targets, device=face_cls.device)
    assigned = SingleScaleAssigner(stride)(tuple(face_cls.shape[-2:]), gt_boxes, gt_mask)
    pos = assigned.cls > 0  # [B, H, W]
    num_pos = pos.sum().float()
    norm = num_pos.clamp(min=1.0)
    cls_loss = _focal(face_cls[:, 0], assigned.cls) / norm
    pred = face_bbox.permute(0, 2, 3, 1)  # [B, H, W, 4]
    reg_loss = _smooth_l1(pred[pos], assigned.bbox[pos]) / norm
    return {
        "loss": cls_loss + reg_loss,
        "cls_loss": cls_loss,
        "reg_loss": reg_loss,
        "num_pos": num_pos.detach(),
    }


def yolox_loss(
    cls: Tensor,
    boxes: Tensor,
    obj: Tensor,
    points: Tensor,
    point_strides: Tensor,
    targets: list[dict],
    num_classes: int,
    reg_weight: float = 5.0,
) -> dict[str, Tensor]:
    """NightVision's loss.

    Args:
        cls: Tensor[B, A, C] logits. boxes: Tensor[B, A, 4] decoded xyxy pixels. obj: Tensor[B, A, 1] logits.
        points: Tensor[A, 2] cell centres. point_strides: Tensor[A].
        targets: per-image dicts with ``boxes`` and ``labels``.
    """
    gt_boxes, gt_labels, gt_mask = pad_targets(targets, device=cls.device)
    _check_labels(gt_labels, gt_mask, num_classes, "NightVision")
    scores = (cls.detach().sigmoid() * obj.detach().sigmoid()).float()  # [B, A, C]
    assigned = SimOTAAssigner()(
        scores, boxes.detach().float(), points, point_strides, gt_boxes, gt_labels, gt_mask
    )
    fg = assigned.fg_mask  # [B, A]
    num_fg = fg.sum().float()
    norm = num_fg.clamp(min=1.0)
    obj_loss = _bce_sum(obj[..., 0], fg.float()) / norm
    cls_target = (
        F.one_hot(assigned.labels[fg], num_classes).float() * assigned.matched_iou[fg][:, None]
    )  # [M, C]
    cls_loss = _bce_sum(cls[fg], cls_target) / norm
    batch_index = torch.arange(fg.shape[0], device=fg.device)[:, None].expand_as(fg)[fg]  # [M]
    matched_boxes = gt_boxes[batch_index, assigned.matched_gt[fg]]  # [M, 4]
    reg_loss = reg_weight * _giou_xyxy(boxes[fg], matched_boxes) / norm
    return {
        "loss": obj_loss + cls_loss + reg_loss,
        "cls_loss": cls_loss,
        "reg_loss": reg_loss,
        "obj_loss": obj_loss,
        "num_pos": num_fg.detach(),
    }
