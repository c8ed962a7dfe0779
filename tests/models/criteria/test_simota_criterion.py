"""YOLOXCriterion equals the losses it replaced: YOLOX's inline ``YOLOX.loss`` and NightVision's per-rank
``yolox_loss`` (references below, copied from the code before the criteria), on random outputs."""

import pytest
import torch
from torch import nn

from detforge.assigners.simota import SimOTAAssigner
from detforge.boxes import centre_size_to_xyxy, grid_points
from detforge.losses import BCEWithLogitsLoss, GIoULoss, get_loss
from detforge.models.criteria import YOLOXCriterion
from detforge.targets import pad_targets

STRIDES = (8, 16, 32)
SIZES = [(8, 8), (4, 4), (2, 2)]  # a 64 x 64 image


def random_targets(seed, batch=2, num_classes=3, max_boxes=6):
    g = torch.Generator().manual_seed(seed)
    targets = []
    for _ in range(batch):
        n = int(torch.randint(0, max_boxes + 1, (1,), generator=g))
        xy = torch.rand(n, 2, generator=g) * 56
        wh = 2 + torch.rand(n, 2, generator=g) * 60
        boxes = torch.cat([xy, (xy + wh).clamp(max=64)], 1)
        targets.append({"boxes": boxes, "labels": torch.randint(0, num_classes, (n,), generator=g)})
    return targets


def random_outputs(seed, batch=2, num_classes=3):
    """cls_logits [B, A, C], boxes [B, A, 4] (decoded xyxy), obj_logits [B, A]."""
    g = torch.Generator().manual_seed(seed)
    points, strides = grid_points(SIZES, STRIDES)
    deltas = torch.randn(batch, points.shape[0], 4, generator=g) * 0.5  # [B, A, 4]
    deltas[..., 2:] += 0.7
    return {
        "cls_logits": torch.randn(batch, points.shape[0], num_classes, generator=g).requires_grad_(),
        "boxes": centre_size_to_xyxy(points, strides, deltas).requires_grad_(),
        "obj_logits": torch.randn(batch, points.shape[0], generator=g).requires_grad_(),
    }


def old_yolox_loss(out, targets, strides, weights=(1.0, 5.0, 1.0)):
    """``YOLOX.loss`` before the criteria (one process: ``mean_over_ranks`` is the identity)."""
    cls_logits, boxes, obj_logits = out["cls_logits"], out["boxes"], out["obj_logits"]
    num_classes = cls_logits.shape[-1]
    cls_fn, reg_fn, obj_fn = (get_loss(n, reduction="sum") for n in ("bce", "giou", "bce"))
    gt_boxes, gt_labels, gt_mask = pad_targets(targets)
    points, point_strides = grid_points(out["feat_sizes"], strides)
    scores = cls_logits.detach().float().sigmoid() * obj_logits.detach().float().sigmoid()[..., None]
    assigned = SimOTAAssigner(center_radius=2.5, candidate_topk=10)(
        scores, boxes.detach().float(), points, point_strides, gt_boxes, gt_labels, gt_mask
    )
    fg = assigned.fg_mask
    num_fg = fg.sum().detach().float().clamp(min=1.0)
    obj_loss = obj_fn(obj_logits, fg.to(obj_logits.dtype)) / num_fg
    soft = nn.functional.one_hot(assigned.labels[fg], num_classes).to(cls_logits.dtype)
    soft = soft * assigned.matched_iou[fg].to(cls_logits.dtype)[:, None]
    cls_loss = cls_fn(cls_logits[fg], soft) / num_fg
    image_of = fg.nonzero(as_tuple=True)[0]
    matched = gt_boxes[image_of, assigned.matched_gt[fg]]
    reg_loss = reg_fn(boxes[fg], matched) / num_fg
    total = weights[0] * cls_loss + weights[1] * reg_loss + weights[2] * obj_loss
    return {"loss": total, "cls_loss": cls_loss, "reg_loss": reg_loss, "obj_loss": obj_loss}


def old_nightvision_loss(cls, boxes, obj, points, point_strides, targets, num_classes, reg_weight=5.0):
    """``edge.losses.yolox_loss`` before the criteria (normalised per rank; its ``reg_loss`` was weighted)."""
    bce, giou = BCEWithLogitsLoss(reduction="sum"), GIoULoss(box_format="xyxy", reduction="sum")
    gt_boxes, gt_labels, gt_mask = pad_targets(targets)
    scores = (cls.detach().sigmoid() * obj.detach().sigmoid()).float()
    assigned = SimOTAAssigner()(
        scores, boxes.detach().float(), points, point_strides, gt_boxes, gt_labels, gt_mask
    )
    fg = assigned.fg_mask
    num_fg = fg.sum().float()
    norm = num_fg.clamp(min=1.0)
    obj_loss = bce(obj[..., 0], fg.float()) / norm
    cls_target = (
        nn.functional.one_hot(assigned.labels[fg], num_classes).float() * assigned.matched_iou[fg][:, None]
    )
    cls_loss = bce(cls[fg], cls_target) / norm
    batch_index = torch.arange(fg.shape[0])[:, None].expand_as(fg)[fg]
    matched_boxes = gt_boxes[batch_index, assigned.matched_gt[fg]]
    reg_loss = reg_weight * giou(boxes[fg], matched_boxes) / norm
    return {
        "loss": obj_loss + cls_loss + reg_loss,
        "cls_loss": cls_loss,
        "reg_loss": reg_loss,
        "obj_loss": obj_loss,
        "num_pos": num_fg,
    }


def assert_losses_equal(new, old, keys):
    for key in keys:
        torch.testing.assert_close(new[key], old[key].detach().float(), rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_the_old_yolox_loss(seed):
    out = random_outputs(seed)
    out["feat_sizes"] = SIZES
    targets = random_targets(seed)
    weights = (2.0, 3.0, 0.5)
    criterion = YOLOXCriterion(STRIDES, cls_weight=weights[0], reg_weight=weights[1], obj_weight=weights[2])
    new = criterion(out["cls_logits"], out["boxes"], out["obj_logits"], SIZES, *pad_targets(targets))
    old = old_yolox_loss(out, targets, STRIDES, weights)
    assert_losses_equal(new, old, ("loss", "cls_loss", "reg_loss", "obj_loss"))
    assert (float(new["num_pos"]) > 0) == any(len(t["boxes"]) for t in targets)
    inputs = [out["cls_logits"], out["boxes"], out["obj_logits"]]
    for a, b in zip(torch.autograd.grad(new["loss"], inputs), torch.autograd.grad(old["loss"], inputs)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert not any(v.requires_grad for k, v in new.items() if k != "loss")


def test_equals_the_old_nightvision_loss(edge_case_targets):
    out = random_outputs(7)
    points, point_strides = grid_points(SIZES, STRIDES)
    obj = out["obj_logits"][..., None]  # [B, A, 1] as NightVision flattens it
    criterion = YOLOXCriterion(STRIDES, reg_weight=5.0)
    for targets in (edge_case_targets, random_targets(7)):
        new = criterion(out["cls_logits"], out["boxes"], obj[..., 0], SIZES, *pad_targets(targets))
        old = old_nightvision_loss(out["cls_logits"], out["boxes"], obj, points, point_strides, targets, 3)
        assert_losses_equal(new, old, ("loss", "cls_loss", "obj_loss", "num_pos"))
        # the old reg_loss entry was weighted by 5; the criterion reports every part unweighted
        torch.testing.assert_close(new["reg_loss"] * 5, old["reg_loss"].detach(), rtol=1e-5, atol=1e-6)


def test_nightvision_loss_uses_the_criterion():
    from detforge.models.edge.nightvision import NightVision

    torch.manual_seed(0)
    model = NightVision(num_classes=3, input_size=(64, 64))
    assert isinstance(model.criterion, YOLOXCriterion) and model.criterion.reg_weight == 5.0
    out = model(torch.rand(2, model.in_chans, 64, 64))
    targets = random_targets(4)
    cls, boxes, obj = model.flatten_outputs(out)
    points, point_strides = grid_points(SIZES, STRIDES)
    new = model.loss(out, targets)
    old = old_nightvision_loss(cls, boxes, obj, points, point_strides, targets, 3)
    assert_losses_equal(new, old, ("loss", "cls_loss", "obj_loss", "num_pos"))


def test_yolox_model_loss_is_its_criterion():
    from detforge.models.yolox import YOLOX

    torch.manual_seed(0)
    model = YOLOX("resnet10t", num_classes=3, fpn_channels=16, head_width=16, head_num_convs=1)
    assert isinstance(model.criterion, YOLOXCriterion) and model.assigner is model.criterion.assigner
    out = model(torch.rand(2, 3, 64, 64))
    targets = random_targets(3)
    assert_losses_equal(
        model.loss(out, targets),
        old_yolox_loss(out, targets, model.strides),
        ("loss", "cls_loss", "reg_loss"),
    )


def test_holds_no_parameters_and_validates():
    criterion = YOLOXCriterion(STRIDES)
    assert list(criterion.parameters()) == [] and criterion.state_dict() == {}
    with pytest.raises(ValueError, match=r"reg_loss must be one of \('iou', 'giou', 'diou', 'ciou'\)"):
        YOLOXCriterion(STRIDES, reg_loss="l1")
    with pytest.raises(ValueError, match="holds no parameters"):
        YOLOXCriterion(STRIDES, cls_loss=nn.Linear(2, 2))
    out = random_outputs(0, batch=1)
    bad = [{"boxes": torch.tensor([[1.0, 1, 9, 9]]), "labels": torch.tensor([-2])}]
    with pytest.raises(ValueError, match=r"target 0 of the batch, box 0: label -2"):
        criterion(out["cls_logits"], out["boxes"], out["obj_logits"], SIZES, *pad_targets(bad))
