"""SetCriterion against a plain per-layer, per-image loop written from DETR's definitions (scipy matching,
torchvision GIoU), for the four classification losses."""

import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torchvision.ops import box_convert, box_iou, generalized_box_iou, sigmoid_focal_loss

from detforge.boxes import rel_cxcywh_to_xyxy, xyxy_to_rel_cxcywh
from detforge.models.criteria.set_prediction import SetCriterion
from detforge.targets import pad_targets

NUM_CLASSES = 3
SIZES = [(64, 96), (48, 80), (64, 64)]  # real (h, w) of each image; the batch is padded to 64 x 96


def _targets():
    g = torch.Generator().manual_seed(5)
    out = []
    for n, (h, w) in zip([3, 0, 2], SIZES):
        xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
        wh = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.3, h * 0.3]) + 4
        out.append(
            {"boxes": torch.cat([xy, xy + wh], 1), "labels": torch.randint(0, NUM_CLASSES, (n,), generator=g)}
        )
    return out


def _outputs(num_logits: int, layers: int = 3, queries: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(layers, len(SIZES), queries, num_logits, generator=g)
    boxes = torch.randn(layers, len(SIZES), queries, 4, generator=g).sigmoid() * 0.6 + 0.05
    return logits.requires_grad_(), boxes.requires_grad_()


def _reference(logits, boxes, targets, class_loss, weights=(1.0, 5.0, 2.0), eos=0.1, alpha=0.25, gamma=2.0):
    """DETR's SetCriterion, one decoder layer and one image at a time."""
    num_boxes = max(sum(len(t["labels"]) for t in targets), 1)
    total = 0.0
    for layer in range(logits.shape[0]):
        ce_num, ce_den = 0.0, 0.0
        for i, (t, (h, w)) in enumerate(zip(targets, SIZES)):
            scale = torch.tensor([w, h, w, h], dtype=torch.float32)
            tgt = box_convert(t["boxes"], "xyxy", "cxcywh") / scale  # [n, 4]
            lg, bx = logits[layer, i], boxes[layer, i]  # [Q, K], [Q, 4]
            labels = t["labels"]
            if class_loss == "softmax":
                cost_class = -lg.softmax(-1)[:, labels]
            else:
                p = lg.sigmoid()[:, labels]
                cost_class = (
                    alpha * (1 - p) ** gamma * -(p + 1e-8).log()
                    - (1 - alpha) * p**gamma * -(1 - p + 1e-8).log()
                )
            pred_xyxy = box_convert(bx, "cxcywh", "xyxy")
            tgt_xyxy = box_convert(tgt, "cxcywh", "xyxy")
            cost = cost_class + 5 * torch.cdist(bx, tgt, p=1) - 2 * generalized_box_iou(pred_xyxy, tgt_xyxy)
            rows, cols = linear_sum_assignment(cost.detach().numpy())
            rows, cols = torch.as_tensor(rows), torch.as_tensor(cols)
            l1 = (bx[rows] - tgt[cols]).abs().sum()
            giou = (1 - torch.diag(generalized_box_iou(pred_xyxy[rows], tgt_xyxy[cols]))).sum()
            total = total + (weights[1] * l1 + weights[2] * giou) / num_boxes
            if class_loss == "softmax":
                target = torch.full((lg.shape[0],), NUM_CLASSES, dtype=torch.int64)
                target[rows] = labels[cols]
                weight = torch.ones(NUM_CLASSES + 1)
                weight[-1] = eos
                ce_num = ce_num + (F.cross_entropy(lg, target, reduction="none") * weight[target]).sum()
                ce_den += float(weight[target].sum())
            else:
                target = torch.zeros_like(lg)
                if class_loss == "focal":
                    target[rows, labels[cols]] = 1.0
                    loss = sigmoid_focal_loss(lg, target, alpha, gamma, reduction="sum")
                elif class_loss == "varifocal":
                    iou = torch.diag(box_iou(pred_xyxy[rows], tgt_xyxy[cols])).detach()
                    target[rows, labels[cols]] = iou
                    p = lg.sigmoid().detach()
                    pos = torch.zeros_like(lg, dtype=torch.bool)
                    pos[rows, labels[cols]] = True
                    wgt = torch.where(pos, target, 0.75 * p**2)
                    loss = F.binary_cross_entropy_with_logits(lg, target, weight=wgt, reduction="sum")
                else:  # matchability (DEIM): IoU^1.5 targets at weight 1, negatives weighted p^1.5
                    iou = torch.diag(box_iou(pred_xyxy[rows], tgt_xyxy[cols])).detach()
                    target[rows, labels[cols]] = iou**1.5
                    p = lg.sigmoid().detach()
                    wgt = p**1.5
                    wgt[rows, labels[cols]] = 1.0
                    loss = F.binary_cross_entropy_with_logits(lg, target, weight=wgt, reduction="sum")
                total = total + weights[0] * loss / num_boxes
        if class_loss == "softmax":
            total = total + weights[0] * ce_num / ce_den
    return total


@pytest.mark.parametrize("class_loss", ["softmax", "focal", "varifocal", "matchability"])
def test_matches_per_image_reference(class_loss):
    targets = _targets()
    num_logits = NUM_CLASSES + (1 if class_loss == "softmax" else 0)
    logits, boxes = _outputs(num_logits)
    gt_boxes, gt_labels, gt_mask = pad_targets(targets)
    criterion = SetCriterion(class_loss=class_loss)
    out = criterion(logits, boxes, gt_boxes, gt_labels, gt_mask, torch.tensor(SIZES))
    want = _reference(logits, boxes, targets, class_loss)
    assert out["loss"].item() == pytest.approx(want.item(), rel=1e-5)
    grad = torch.autograd.grad(out["loss"], [logits, boxes])
    want_grad = torch.autograd.grad(want, [logits, boxes])
    for got, ref in zip(grad, want_grad):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-6)
    assert out["num_pos"].item() == 5
    last = (
        criterion.class_weight * out["class_loss"]
        + criterion.l1_weight * out["l1_loss"]
        + criterion.giou_weight * out["giou_loss"]
    )
    assert (last + out["aux_loss"]).item() == pytest.approx(out["loss"].item(), rel=1e-5)
    assert all(not v.requires_grad for k, v in out.items() if k != "loss")


def test_list_of_layers_equals_stacked_tensor():
    logits, boxes = _outputs(NUM_CLASSES + 1)
    padded = pad_targets(_targets())
    sizes = torch.tensor(SIZES)
    criterion = SetCriterion()
    stacked = criterion(logits, boxes, *padded, sizes)
    listed = criterion(list(logits), list(boxes), *padded, sizes)
    assert stacked["loss"].item() == pytest.approx(listed["loss"].item())


def test_no_targets_gives_finite_loss_and_gradient():
    logits, boxes = _outputs(NUM_CLASSES + 1)
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}] * len(SIZES)
    out = SetCriterion()(logits, boxes, *pad_targets(empty), torch.tensor(SIZES))
    assert torch.isfinite(out["loss"]) and out["l1_loss"] == 0 and out["num_pos"] == 0
    out["loss"].backward()
    assert torch.isfinite(logits.grad).all() and boxes.grad is not None


def test_perfect_predictions_have_zero_box_loss():
    targets = _targets()
    gt_boxes, gt_labels, gt_mask = pad_targets(targets)
    sizes = torch.tensor(SIZES)
    tgt = xyxy_to_rel_cxcywh(gt_boxes, sizes[:, None, :].float())  # [B, G, 4]
    torch.testing.assert_close(rel_cxcywh_to_xyxy(tgt, sizes[:, None, :].float()), gt_boxes)
    queries = 4
    boxes = torch.full((1, len(SIZES), queries, 4), 0.5)
    boxes[0, :, : tgt.shape[1]] = tgt
    logits = torch.zeros(1, len(SIZES), queries, NUM_CLASSES + 1)
    logits[..., -1] = 10.0
    for i, t in enumerate(targets):
        logits[0, i, torch.arange(len(t["labels"])), t["labels"]] = 20.0
    out = SetCriterion()(logits, boxes, gt_boxes, gt_labels, gt_mask, sizes)
    assert out["l1_loss"].item() == pytest.approx(0.0, abs=1e-6)
    assert out["giou_loss"].item() == pytest.approx(0.0, abs=1e-5)
    assert out["class_loss"].item() < 1e-3


def test_options_are_validated():
    with pytest.raises(ValueError, match="class_loss"):
        SetCriterion(class_loss="hinge")
    with pytest.raises(ValueError, match="l1_weight"):
        SetCriterion(l1_weight=-1)
    logits, boxes = _outputs(NUM_CLASSES + 1)
    gt_boxes, gt_labels, gt_mask = pad_targets(_targets())
    with pytest.raises(ValueError, match="outside"):
        SetCriterion()(logits, boxes, gt_boxes, gt_labels + 5, gt_mask, torch.tensor(SIZES))
