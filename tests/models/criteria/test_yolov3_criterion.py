"""YOLOv3 criterion against a plain per-prediction reference of its three losses."""

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import generalized_box_iou

from detforge.anchors import COCO_ANCHORS
from detforge.boxes import anchor_grid, xyxy_to_yolo, yolo_to_xyxy
from detforge.models.criteria.yolov3 import YOLOv3Criterion
from detforge.targets import pad_targets

FEAT_SIZES = [(8, 12), (4, 6), (2, 3)]
STRIDES = (8, 16, 32)
ANCHORS = torch.tensor(COCO_ANCHORS, dtype=torch.float32) * 0.25


def _inputs(edge_case_targets, num_classes=3):
    p = sum(h * w * 3 for h, w in FEAT_SIZES)
    g = torch.Generator().manual_seed(0)
    raw = torch.randn(2, p, 5 + num_classes, generator=g)
    corners, strides, sizes = anchor_grid(FEAT_SIZES, STRIDES, ANCHORS)
    boxes = yolo_to_xyxy(corners, strides, sizes, raw[..., :4])
    return raw, boxes, (corners, strides, sizes)


@pytest.mark.parametrize("reg_loss", ["giou", "mse"])
def test_criterion_matches_reference(edge_case_targets, reg_loss):
    raw, boxes, (corners, strides, sizes) = _inputs(edge_case_targets)
    crit = YOLOv3Criterion(STRIDES, reg_loss=reg_loss, cls_weight=1.0, reg_weight=2.0, obj_weight=3.0)
    gt_boxes, gt_labels, gt_mask = pad_targets(edge_case_targets)
    out = crit(
        raw[..., 5:], raw[..., :4], boxes, raw[..., 4], FEAT_SIZES, ANCHORS, gt_boxes, gt_labels, gt_mask
    )
    a = crit.assigner(boxes, FEAT_SIZES, STRIDES, ANCHORS, gt_boxes, gt_labels, gt_mask)
    obj = cls = reg = 0.0
    num_pos = 0
    for b in range(2):
        for p in range(raw.shape[1]):
            o = raw[b, p, 4]
            if a.labels[b, p] >= 0:
                num_pos += 1
                obj += float(F.binary_cross_entropy_with_logits(o, torch.tensor(1.0)))
                onehot = F.one_hot(a.labels[b, p], 3).float()
                cls += float(F.binary_cross_entropy_with_logits(raw[b, p, 5:], onehot, reduction="sum"))
                gt = gt_boxes[b, a.matched_gt[b, p]]
                if reg_loss == "giou":
                    reg += float(1 - generalized_box_iou(boxes[b, p][None], gt[None])[0, 0])
                else:
                    t = xyxy_to_yolo(corners[p : p + 1], strides[p : p + 1], sizes[p : p + 1], gt[None])[0]
                    pred = torch.cat([raw[b, p, :2].sigmoid(), raw[b, p, 2:4]])
                    w, h = float(gt[2] - gt[0]), float(gt[3] - gt[1])
                    reg += float((2 - w * h / (64 * 96)) * ((pred - t) ** 2).sum())
            elif not a.ignore[b, p]:
                obj += float(F.binary_cross_entropy_with_logits(o, torch.tensor(0.0)))
    n = max(num_pos, 1)
    assert out["num_pos"] == num_pos
    assert out["obj_loss"].item() == pytest.approx(obj / n, rel=1e-4)
    assert out["cls_loss"].item() == pytest.approx(cls / n, rel=1e-4, abs=1e-6)
    assert out["reg_loss"].item() == pytest.approx(reg / n, rel=1e-4, abs=1e-6)
    assert out["loss"].item() == pytest.approx((cls + 2 * reg + 3 * obj) / n, rel=1e-4)


def test_bad_reg_loss_is_a_value_error():
    with pytest.raises(ValueError, match="reg_loss_fn"):
        YOLOv3Criterion(STRIDES, reg_loss="l1")
