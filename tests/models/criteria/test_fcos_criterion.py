"""FCOSCriterion equals the losses it replaced: FCOS's inline ``FCOS.loss`` and Nexus's per-rank
``fcos_uncertainty_loss`` (references below, copied from the code before the criteria), on random outputs."""

import pytest
import torch
from torch import nn

from detforge.assigners.fcos import FCOSAssigner
from detforge.losses import BCEWithLogitsLoss, FocalLoss, GIoULoss, UncertaintyLoss, get_loss
from detforge.losses.iou import paired_box_iou
from detforge.models.criteria import FCOSCriterion, default_regress_ranges
from detforge.targets import pad_targets

STRIDES = (8, 16, 32, 64, 128)
SIZES = [(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)]  # a 64 x 64 image


def random_targets(seed, batch=2, num_classes=3, max_boxes=6):
    g = torch.Generator().manual_seed(seed)
    targets = []
    for _ in range(batch):
        n = int(torch.randint(0, max_boxes + 1, (1,), generator=g))
        xy = torch.rand(n, 2, generator=g) * 56
        wh = 2 + torch.rand(n, 2, generator=g) * 60
        targets.append(
            {
                "boxes": torch.cat([xy, (xy + wh).clamp(max=64)], 1),
                "labels": torch.randint(0, num_classes, (n,), generator=g),
            }
        )
    return targets


def random_outputs(seed, sizes, strides, batch=2, num_classes=3):
    """cls_logits [B, P, C], box_reg [B, P, 4] (positive pixels), centerness [B, P], box_log_var [B, P, 4]."""
    g = torch.Generator().manual_seed(seed)
    point_strides = torch.cat([torch.full((h * w,), float(s)) for (h, w), s in zip(sizes, strides)])  # [P]
    p = point_strides.numel()
    return {
        "cls_logits": torch.randn(batch, p, num_classes, generator=g).requires_grad_(),
        "box_reg": ((torch.randn(batch, p, 4, generator=g) * 0.7).exp() * 2 * point_strides[:, None])
        .detach()
        .requires_grad_(),
        "centerness": torch.randn(batch, p, generator=g).requires_grad_(),
        "box_log_var": (torch.randn(batch, p, 4, generator=g) * 0.5).requires_grad_(),
        "point_strides": point_strides,
    }


def old_fcos_loss(outputs, targets, strides, cls_loss_fn, weights=(1.0, 1.0, 1.0)):
    """``FCOS.loss`` before the criteria (one process: ``mean_over_ranks`` is the identity)."""
    cls_logits, box_reg, centerness = outputs["cls_logits"], outputs["box_reg"], outputs["centerness"]
    num_classes = cls_logits.shape[-1]
    quality = cls_loss_fn == "quality_focal"
    kw = dict(alpha=0.25, gamma=2.0) if cls_loss_fn == "focal" else dict(beta=2.0)
    cls_fn = get_loss(cls_loss_fn, reduction="sum", **kw)
    reg_fn = get_loss("giou", box_format="ltrb", reduction="sum")
    ctr_fn = get_loss("bce", reduction="sum")
    gt_boxes, gt_labels, gt_mask = pad_targets(targets)
    assigned = FCOSAssigner(strides, default_regress_ranges(strides), 1.5)(
        outputs["feat_sizes"], gt_boxes, gt_labels, gt_mask
    )
    pos = assigned.labels >= 0
    num_pos = pos.sum().detach().float().clamp(min=1.0)
    one_hot = torch.zeros_like(cls_logits)
    pos_target = nn.functional.one_hot(assigned.labels[pos], num_classes).to(one_hot.dtype)
    if quality:
        as_box = lambda d: torch.cat([-d[..., :2], d[..., 2:]], dim=-1)  # noqa: E731
        iou = paired_box_iou(as_box(box_reg[pos].detach().float()), as_box(assigned.ltrb[pos]))
        pos_target = pos_target * iou.clamp(min=0.0).to(one_hot.dtype)[:, None]
    one_hot[pos] = pos_target
    cls_loss = cls_fn(cls_logits, one_hot) / num_pos
    ctr_target = assigned.centerness[pos]
    ctr_norm = ctr_target.sum().detach().float().clamp(min=1e-6)
    reg_loss = reg_fn(box_reg[pos], assigned.ltrb[pos], ctr_target) / ctr_norm
    centerness_loss = ctr_fn(centerness[pos], ctr_target) / num_pos
    total = weights[0] * cls_loss + weights[1] * reg_loss + weights[2] * centerness_loss
    return {"loss": total, "cls_loss": cls_loss, "reg_loss": reg_loss, "centerness_loss": centerness_loss}


def old_nexus_loss(flat, targets, strides):
    """``edge.losses.fcos_uncertainty_loss`` before the criteria (normalised per rank)."""
    focal = FocalLoss(alpha=0.25, gamma=2.0, reduction="sum")
    giou = GIoULoss(box_format="ltrb", reduction="sum")
    uncertainty = UncertaintyLoss(reduction="sum")
    bce = BCEWithLogitsLoss(reduction="sum")
    cls = flat["cls_logits"]
    gt_boxes, gt_labels, gt_mask = pad_targets(targets)
    assigner = FCOSAssigner(strides, list(default_regress_ranges(strides)), center_sampling_radius=1.5)
    assigned = assigner(flat["feat_sizes"], gt_boxes, gt_labels, gt_mask)
    pos = assigned.labels >= 0
    num_pos = pos.sum().float()
    norm = num_pos.clamp(min=1.0)
    cls_loss = focal(cls.flatten(0, 1), assigned.labels.flatten()) / norm
    ctr_target = assigned.centerness[pos]
    ctr_norm = ctr_target.sum().clamp(min=1e-6)
    pred_ltrb, target_ltrb = flat["bbox_pred"][pos], assigned.ltrb[pos]
    reg_loss = giou(pred_ltrb, target_ltrb, ctr_target) / ctr_norm
    stride = flat["point_strides"][None].expand_as(pos)[pos][:, None]
    log_pred = (pred_ltrb / stride).clamp(min=1e-4).log()
    log_target = (target_ltrb / stride).clamp(min=1e-4).log()
    uncertainty_loss = uncertainty(log_pred, flat["bbox_log_var"][pos], log_target) / (4 * norm)
    centerness_loss = bce(flat["centerness"][pos], ctr_target) / norm
    total = cls_loss + reg_loss + centerness_loss + 0.5 * uncertainty_loss
    return {
        "loss": total,
        "cls_loss": cls_loss,
        "reg_loss": reg_loss,
        "centerness_loss": centerness_loss,
        "uncertainty_loss": uncertainty_loss,
        "num_pos": num_pos,
    }


def assert_losses_equal(new, old, keys):
    for key in keys:
        torch.testing.assert_close(new[key], old[key].detach().float(), rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.parametrize("cls_loss", ["focal", "quality_focal"])
@pytest.mark.parametrize("seed", [0, 1])
def test_equals_the_old_fcos_loss(cls_loss, seed):
    out = random_outputs(seed, SIZES, STRIDES)
    out["feat_sizes"] = SIZES
    targets = random_targets(seed)
    weights = (1.5, 2.0, 0.5)
    criterion = FCOSCriterion(
        STRIDES, cls_loss=cls_loss, cls_weight=weights[0], reg_weight=weights[1], centerness_weight=weights[2]
    )
    args = (out["cls_logits"], out["box_reg"], out["centerness"], SIZES, *pad_targets(targets))
    new = criterion(*args)
    old = old_fcos_loss(out, targets, STRIDES, cls_loss, weights)
    assert_losses_equal(new, old, ("loss", "cls_loss", "reg_loss", "centerness_loss"))
    assert float(new["num_pos"]) > 0
    grads_new = torch.autograd.grad(new["loss"], [out["cls_logits"], out["box_reg"], out["centerness"]])
    grads_old = torch.autograd.grad(old["loss"], [out["cls_logits"], out["box_reg"], out["centerness"]])
    for a, b in zip(grads_new, grads_old):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert set(new) == {"loss", "cls_loss", "reg_loss", "centerness_loss", "num_pos"}
    assert not any(v.requires_grad for k, v in new.items() if k != "loss")


@pytest.mark.parametrize("seed", [0, 3])
def test_equals_the_old_nexus_loss(seed, edge_case_targets):
    strides, sizes = STRIDES[:3], SIZES[:3]
    out = random_outputs(seed, sizes, strides)
    for targets in (edge_case_targets, random_targets(seed)):
        flat = {
            "cls_logits": out["cls_logits"],
            "bbox_pred": out["box_reg"],
            "bbox_log_var": out["box_log_var"],
            "centerness": out["centerness"],
            "point_strides": out["point_strides"],
            "feat_sizes": sizes,
        }
        criterion = FCOSCriterion(strides, uncertainty_weight=0.5)
        new = criterion(
            out["cls_logits"],
            out["box_reg"],
            out["centerness"],
            sizes,
            *pad_targets(targets),
            box_log_var=out["box_log_var"],
        )
        old = old_nexus_loss(flat, targets, strides)
        keys = ("loss", "cls_loss", "reg_loss", "centerness_loss", "uncertainty_loss", "num_pos")
        assert_losses_equal(new, old, keys)


def test_nexus_loss_uses_the_criterion():
    from detforge.models.edge.nexus import Nexus

    torch.manual_seed(0)
    model = Nexus(num_classes=3, input_size=(64, 64))
    assert isinstance(model.criterion, FCOSCriterion) and model.criterion.uncertainty_weight == 0.5
    out = model(torch.rand(2, 3, 64, 64))
    targets = random_targets(5)
    new = model.loss(out, targets)
    old = old_nexus_loss(model.flatten_outputs(out), targets, list(model.strides))
    assert_losses_equal(new, old, ("loss", "cls_loss", "reg_loss", "centerness_loss", "uncertainty_loss"))


def test_fcos_model_loss_is_its_criterion():
    from detforge.models.fcos import FCOS

    torch.manual_seed(0)
    model = FCOS("resnet10t", 3, fpn_channels=16, head_num_convs=1, cls_loss_fn="quality_focal")
    assert isinstance(model.criterion, FCOSCriterion) and model.cls_quality
    assert model.assigner is model.criterion.assigner
    out = model(torch.rand(2, 3, 64, 64))
    targets = random_targets(2)
    assert_losses_equal(
        model.loss(out, targets),
        old_fcos_loss(out, targets, model.strides, "quality_focal"),
        ("loss", "cls_loss", "reg_loss", "centerness_loss"),
    )


def test_holds_no_parameters_or_state():
    criterion = FCOSCriterion(STRIDES, uncertainty_weight=0.5)
    assert list(criterion.parameters()) == [] and criterion.state_dict() == {}


def test_validation():
    with pytest.raises(ValueError, match=r"reg_loss must be one of \('iou', 'giou', 'diou', 'ciou'\)"):
        FCOSCriterion(STRIDES, reg_loss="smooth_l1")
    with pytest.raises(ValueError, match="unknown loss 'nope'"):
        FCOSCriterion(STRIDES, cls_loss="nope")
    with pytest.raises(ValueError, match="holds no parameters"):
        FCOSCriterion(STRIDES, cls_loss=nn.Linear(2, 2))
    criterion = FCOSCriterion(STRIDES[:3], uncertainty_weight=0.5)
    out = random_outputs(0, SIZES[:3], STRIDES[:3])
    with pytest.raises(ValueError, match="needs box_log_var"):
        criterion(
            out["cls_logits"], out["box_reg"], out["centerness"], SIZES[:3], *pad_targets(random_targets(0))
        )
    bad = [{"boxes": torch.tensor([[1.0, 1, 9, 9]]), "labels": torch.tensor([3])}]
    with pytest.raises(ValueError, match=r"target 0 of the batch, box 0: label 3"):
        criterion(
            out["cls_logits"][:1], out["box_reg"][:1], out["centerness"][:1], SIZES[:3], *pad_targets(bad)
        )
