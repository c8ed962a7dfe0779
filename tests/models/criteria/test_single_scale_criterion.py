"""SingleScaleCriterion equals Phantom's per-rank ``single_scale_face_loss`` it replaced (reference below,
copied from the code before the criteria), on random maps."""

import pytest
import torch

from detforge.assigners.single_scale import SingleScaleAssigner
from detforge.losses import FocalLoss, SmoothL1Loss
from detforge.models.criteria import SingleScaleCriterion
from detforge.targets import pad_targets


def random_faces(seed, batch=2, max_boxes=5, size=64):
    g = torch.Generator().manual_seed(seed)
    targets = []
    for _ in range(batch):
        n = int(torch.randint(0, max_boxes + 1, (1,), generator=g))
        xy = torch.rand(n, 2, generator=g) * (size - 8)
        wh = 3 + torch.rand(n, 2, generator=g) * 30
        boxes = torch.cat([xy, (xy + wh).clamp(max=size)], 1)
        targets.append({"boxes": boxes, "labels": torch.zeros(n, dtype=torch.int64)})
    return targets


def random_maps(seed, batch=2, size=16):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(batch, 1, size, size, generator=g).requires_grad_(),
        torch.randn(batch, 4, size, size, generator=g).requires_grad_(),
    )


def old_phantom_loss(face_cls, face_bbox, targets, stride):
    """``edge.losses.single_scale_face_loss`` before the criteria (normalised per rank)."""
    focal, smooth_l1 = (
        FocalLoss(alpha=0.25, gamma=2.0, reduction="sum"),
        SmoothL1Loss(beta=1 / 9, reduction="sum"),
    )
    gt_boxes, _, gt_mask = pad_targets(targets)
    assigned = SingleScaleAssigner(stride)(tuple(face_cls.shape[-2:]), gt_boxes, gt_mask)
    pos = assigned.cls > 0
    num_pos = pos.sum().float()
    norm = num_pos.clamp(min=1.0)
    cls_loss = focal(face_cls[:, 0], assigned.cls) / norm
    pred = face_bbox.permute(0, 2, 3, 1)
    reg_loss = smooth_l1(pred[pos], assigned.bbox[pos]) / norm
    return {"loss": cls_loss + reg_loss, "cls_loss": cls_loss, "reg_loss": reg_loss, "num_pos": num_pos}


def assert_losses_equal(new, old, keys=("loss", "cls_loss", "reg_loss", "num_pos")):
    for key in keys:
        torch.testing.assert_close(new[key], old[key].detach().float(), rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_the_old_phantom_loss(seed):
    cls_map, box_map = random_maps(seed)
    targets = random_faces(seed)
    new = SingleScaleCriterion(4)(cls_map, box_map, *pad_targets(targets)[::2])
    old = old_phantom_loss(cls_map, box_map, targets, 4)
    assert_losses_equal(new, old)
    for a, b in zip(
        torch.autograd.grad(new["loss"], [cls_map, box_map]),
        torch.autograd.grad(old["loss"], [cls_map, box_map]),
    ):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_weights_scale_the_total():
    cls_map, box_map = random_maps(0)
    gt_boxes, _, gt_mask = pad_targets(random_faces(0))
    plain = SingleScaleCriterion(4)(cls_map, box_map, gt_boxes, gt_mask)
    weighted = SingleScaleCriterion(4, cls_weight=2.0, reg_weight=0.5)(cls_map, box_map, gt_boxes, gt_mask)
    torch.testing.assert_close(weighted["loss"], 2.0 * plain["cls_loss"] + 0.5 * plain["reg_loss"])


def test_phantom_loss_uses_the_criterion():
    from detforge.models.edge.phantom import Phantom

    torch.manual_seed(0)
    model = Phantom(input_size=(64, 64))
    assert isinstance(model.criterion, SingleScaleCriterion) and model.criterion.stride == model.stride
    out = model(torch.rand(2, model.in_chans, 64, 64))
    targets = random_faces(3)
    new = model.loss(out, targets)
    assert_losses_equal(new, old_phantom_loss(out["face_cls"], out["face_bbox"], targets, model.stride))


def test_holds_no_parameters_and_validates_shapes():
    criterion = SingleScaleCriterion(4)
    assert list(criterion.parameters()) == [] and criterion.state_dict() == {}
    cls_map, box_map = random_maps(0)
    gt_boxes, _, gt_mask = pad_targets(random_faces(0))
    with pytest.raises(ValueError, match=r"cls_map must be \[B, 1, H, W\] and box_map \[B, 4, H, W\]"):
        criterion(cls_map, box_map[:, :2], gt_boxes, gt_mask)
