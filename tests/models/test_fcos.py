import pytest
import torch
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from detforge.assigners.fcos import FCOSAssigner
from detforge.models.fcos import FCOS, default_regress_ranges
from detforge.targets import pad_targets

SIZE = 64


def target(boxes, labels, **extra):
    t = {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "labels": torch.tensor(labels)}
    t["labels"] = t["labels"].long().reshape(-1)
    t.update(extra)
    return t


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return FCOS("resnet10t", num_classes=3, fpn_channels=32, head_num_convs=1, input_size=(SIZE, SIZE))


@pytest.fixture(scope="module")
def images():
    return torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))


def reference_loss(model, outputs, targets):
    """Per-image loop over torchvision's focal and GIoU losses with the same normalisation."""
    gt_boxes, gt_labels, gt_mask = pad_targets(targets)
    assigned = FCOSAssigner(model.strides, default_regress_ranges(model.strides), 1.5)(
        outputs["feat_sizes"], gt_boxes, gt_labels, gt_mask
    )
    num_pos = max(float((assigned.labels >= 0).sum()), 1.0)
    cls = reg = ctr = 0.0
    ctr_sum = 0.0
    for i in range(len(targets)):
        pos = assigned.labels[i] >= 0
        onehot = torch.zeros_like(outputs["cls_logits"][i])
        onehot[pos, assigned.labels[i][pos]] = 1.0
        cls = cls + sigmoid_focal_loss(outputs["cls_logits"][i], onehot, 0.25, 2.0, "sum")
        lt, tt = outputs["box_reg"][i][pos], assigned.ltrb[i][pos]
        as_box = lambda d: torch.stack([-d[:, 0], -d[:, 1], d[:, 2], d[:, 3]], 1)  # noqa: E731
        w = assigned.centerness[i][pos]
        reg = reg + (generalized_box_iou_loss(as_box(lt), as_box(tt), reduction="none") * w).sum()
        ctr_sum += float(w.sum())
        ctr = ctr + torch.nn.functional.binary_cross_entropy_with_logits(
            outputs["centerness"][i][pos], w, reduction="sum"
        )
    return cls / num_pos, reg / max(ctr_sum, 1e-6), ctr / num_pos


def test_forward_shapes_match_the_assigner_points(model, images):
    out = model(images)
    p = sum(h * w for h, w in out["feat_sizes"])
    assert model.strides == (8, 16, 32, 64, 128)
    assert out["cls_logits"].shape == (2, p, 3) and out["box_reg"].shape == (2, p, 4)
    points, _ = model.assigner.points(out["feat_sizes"])
    assert points.shape[0] == p
    assert model.num_classes == 3 and model.in_chans == 3 and model.default_input_size == (SIZE, SIZE)


def test_loss_equals_per_image_reference_and_backprops(model, images, edge_case_targets):
    targets = edge_case_targets
    model.zero_grad()
    out = model(images)
    losses = model.loss(out, targets)
    cls, reg, ctr = reference_loss(model, out, targets)
    torch.testing.assert_close(losses["cls_loss"], cls.detach(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(
        losses["reg_loss"], torch.as_tensor(reg).detach().float(), rtol=1e-4, atol=1e-6
    )
    torch.testing.assert_close(
        losses["centerness_loss"], torch.as_tensor(ctr).detach().float(), rtol=1e-4, atol=1e-6
    )
    torch.testing.assert_close(
        losses["loss"].detach(), losses["cls_loss"] + losses["reg_loss"] + losses["centerness_loss"]
    )
    assert (float(losses["num_pos"]) > 0) == any(len(t["boxes"]) for t in targets)
    losses["loss"].backward()
    assert torch.isfinite(model.head.cls_logits.weight.grad).all()
    assert model.head.cls_logits.weight.grad.abs().sum() > 0


def test_quality_focal_loss_uses_iou_targets(images, edge_case_targets):
    """cls_loss_fn="quality_focal": per-image reference with torchvision's box_iou of the decoded boxes."""
    from torchvision.ops import box_iou

    torch.manual_seed(0)
    model = FCOS(
        "resnet10t", 3, fpn_channels=32, head_num_convs=1, input_size=(SIZE, SIZE), cls_loss_fn="quality_focal"
    )
    out = model(images)
    losses = model.loss(out, edge_case_targets)
    gt_boxes, gt_labels, gt_mask = pad_targets(edge_case_targets)
    assigned = model.assigner(out["feat_sizes"], gt_boxes, gt_labels, gt_mask)
    points, _ = model.assigner.points(out["feat_sizes"])  # [P, 2]
    num_pos = max(float((assigned.labels >= 0).sum()), 1.0)
    cls = 0.0
    for i in range(len(edge_case_targets)):
        pos = assigned.labels[i] >= 0
        soft = torch.zeros_like(out["cls_logits"][i])
        d, t = out["box_reg"][i][pos].detach(), assigned.ltrb[i][pos]
        p = points[pos]
        pred = torch.cat([p - d[:, :2], p + d[:, 2:]], 1)
        true = torch.cat([p - t[:, :2], p + t[:, 2:]], 1)
        iou = box_iou(pred, true).diagonal() if len(p) else torch.zeros(0)
        soft[pos, assigned.labels[i][pos]] = iou
        sigma = out["cls_logits"][i].sigmoid()
        bce = torch.nn.functional.binary_cross_entropy_with_logits(out["cls_logits"][i], soft, reduction="none")
        cls = cls + (bce * (soft - sigma).abs() ** 2).sum()
    torch.testing.assert_close(losses["cls_loss"], (cls / num_pos).detach(), rtol=1e-4, atol=1e-6)
    losses["loss"].backward()
    assert torch.isfinite(model.head.cls_logits.weight.grad).all()


def test_crowd_boxes_are_not_trained_on(model, images):
    out = model(images)
    plain = model.loss(out, [target([[10, 12, 40, 50]], [1]), target([], [])])
    crowd = model.loss(
        out,
        [
            target([[10, 12, 40, 50], [0, 0, 30, 30]], [1, 0], iscrowd=torch.tensor([False, True])),
            target([], []),
        ],
    )
    for key in ("loss", "num_pos"):
        torch.testing.assert_close(plain[key], crowd[key])


def test_num_pos_is_averaged_over_ranks(model, images, monkeypatch):
    targets = [target([[4, 4, 20, 30], [30, 30, 60, 62]], [0, 1]), target([[8, 8, 56, 56]], [1])]
    out = model(images)
    single = model.loss(out, targets)

    # Another rank with 3x as many positives: the normaliser becomes the mean, 2x ours.
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda t: t.mul_(4))
    double = model.loss(out, targets)
    torch.testing.assert_close(double["cls_loss"], single["cls_loss"] / 2)
    torch.testing.assert_close(double["centerness_loss"], single["centerness_loss"] / 2)


def test_criterion_holds_no_state(model):
    """The loss lives in a parameter-free criterion: no state-dict keys, so earlier checkpoints still load."""
    assert list(model.criterion.parameters()) == [] and model.criterion.state_dict() == {}
    assert not any(key.startswith("criterion") for key in model.state_dict())


def test_bad_label_names_the_image_and_box(model, images):
    with pytest.raises(ValueError, match=r"target 1 of the batch, box 0: label 3"):
        model.loss(model(images), [target([], []), target([[1, 1, 9, 9]], [3])])


def test_postprocess_same_in_train_and_eval_mode(model, images):
    model.score_thresh = 0.0
    model.train()
    train_out = model.postprocess(model(images), [(SIZE, SIZE), (40, 50)])
    model.eval()
    eval_out = model.postprocess(model(images), [(SIZE, SIZE), (40, 50)])
    model.score_thresh = 0.05
    assert [d["boxes"].shape[0] for d in eval_out] == [100, 100]
    for d in train_out + eval_out:
        assert d["labels"].dtype == torch.int64 and d["scores"].shape == d["labels"].shape
    boxes = eval_out[1]["boxes"]
    assert (boxes[:, 0::2] <= 50).all() and (boxes[:, 1::2] <= 40).all() and (boxes >= 0).all()


def test_training_fits_one_batch():
    torch.manual_seed(0)
    model = FCOS("resnet10t", num_classes=2, fpn_channels=32, head_num_convs=1, extra_levels=0)
    images = torch.zeros(2, 3, SIZE, SIZE)
    images[0, :, 10:40, 12:44] = 1.0
    images[1, :, 30:60, 4:30] = 1.0
    targets = [target([[12, 10, 44, 40]], [0]), target([[4, 30, 30, 60]], [1])]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(15):
        loss = model.loss(model(images), targets)["loss"]
        first = first if first is not None else float(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < 0.5 * first


def test_constructor_validation():
    with pytest.raises(ValueError, match="nms_method must be one of"):
        FCOS("resnet10t", 2, nms_method="fast")
    assert default_regress_ranges((8, 16, 32)) == ((-1.0, 64.0), (64.0, 128.0), (128.0, float("inf")))
