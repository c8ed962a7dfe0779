import pytest
import torch
from torchvision.ops import generalized_box_iou_loss

from detforge.assigners.simota import SimOTAAssigner
from detforge.boxes import grid_points
from detforge.models.yolox import YOLOX
from detforge.targets import pad_targets

SIZE = 64


def target(boxes, labels):
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels).long(),
    }


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return YOLOX("resnet10t", num_classes=3, fpn_channels=32, head_width=16, head_num_convs=1)


@pytest.fixture(scope="module")
def images():
    return torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))


def reference_loss(model, out, targets):
    """Per-image loop over torch / torchvision losses with YOLOX's normalisation."""
    gt_boxes, gt_labels, gt_mask = pad_targets(targets)
    points, strides = grid_points(out["feat_sizes"], model.strides)
    scores = out["cls_logits"].detach().sigmoid() * out["obj_logits"].detach().sigmoid()[..., None]
    a = SimOTAAssigner()(scores, out["boxes"].detach(), points, strides, gt_boxes, gt_labels, gt_mask)
    num_fg = max(float(a.fg_mask.sum()), 1.0)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    cls = reg = obj = 0.0
    for i in range(len(targets)):
        fg = a.fg_mask[i]
        obj = obj + bce(out["obj_logits"][i], fg.float(), reduction="sum")
        soft = torch.zeros(int(fg.sum()), 3)
        soft[torch.arange(int(fg.sum())), a.labels[i][fg]] = a.matched_iou[i][fg]
        cls = cls + bce(out["cls_logits"][i][fg], soft, reduction="sum")
        reg = reg + generalized_box_iou_loss(
            out["boxes"][i][fg], gt_boxes[i][a.matched_gt[i][fg]], reduction="sum"
        )
    return cls / num_fg, reg / num_fg, obj / num_fg


def test_forward_shapes(model, images):
    out = model(images)
    assert model.strides == (8, 16, 32)
    a = sum(h * w for h, w in out["feat_sizes"])
    assert a == 8 * 8 + 4 * 4 + 2 * 2
    assert (
        out["cls_logits"].shape == (2, a, 3)
        and out["boxes"].shape == (2, a, 4)
        and out["obj_logits"].shape == (2, a)
    )


def test_loss_equals_per_image_reference_and_backprops(model, images, edge_case_targets):
    targets = edge_case_targets
    model.zero_grad()
    out = model(images)
    losses = model.loss(out, targets)
    cls, reg, obj = (torch.as_tensor(v).detach().float() for v in reference_loss(model, out, targets))
    torch.testing.assert_close(losses["cls_loss"], cls, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(losses["reg_loss"], reg, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(losses["obj_loss"], obj, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(losses["loss"].detach(), cls + 5 * reg + obj, rtol=1e-4, atol=1e-6)
    assert (float(losses["num_pos"]) > 0) == any(len(t["boxes"]) for t in targets)
    losses["loss"].backward()
    grad = model.head.obj_preds[0].weight.grad
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_postprocess_format_and_clipping(model, images):
    model.score_thresh = 0.0
    out = model.postprocess(model(images), [(SIZE, SIZE), (30, 40)])
    model.score_thresh = 0.05
    assert [d["boxes"].shape[0] for d in out] == [100, 100]
    boxes = out[1]["boxes"]
    assert (boxes[:, 0::2] <= 40).all() and (boxes[:, 1::2] <= 30).all() and (boxes >= 0).all()
    assert out[0]["labels"].dtype == torch.int64


def test_criterion_holds_no_state(model):
    """The loss lives in a parameter-free criterion: no state-dict keys, so earlier checkpoints still load."""
    assert list(model.criterion.parameters()) == [] and model.criterion.state_dict() == {}
    assert not any(key.startswith("criterion") for key in model.state_dict())


def test_bad_label_and_options(model, images):
    with pytest.raises(ValueError, match=r"target 0 of the batch, box 0: label 7"):
        model.loss(model(images), [target([[1, 1, 9, 9]], [7]), target([], [])])
    with pytest.raises(ValueError, match="nms_method must be one of"):
        YOLOX("resnet10t", 2, nms_method="x")
