"""RetinaNet's parts against torchvision's: anchor sizes and placement, the batched anchor assignment, the
P6-from-C5 FPN, the state-dict converter; and that the small model learns."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection._utils import BoxCoder, Matcher, _box_loss
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.retinanet import _default_anchorgen
from torchvision.ops import FeaturePyramidNetwork, box_iou
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from detforge.assigners.retinanet import assign_anchors
from detforge.boxes import AnchorBoxCoder
from detforge.models.faster_rcnn.anchors import AnchorGenerator
from detforge.models.necks.fpn import FPN
from detforge.models.registry import create_model
from detforge.models.retinanet import RetinaNet, RetinaNetLoss, retinanet_anchor_sizes
from detforge.models.torchvision_zoo.retinanet import convert_retinanet

STRIDES = (8, 16, 32, 64, 128)


def test_anchor_sizes_are_torchvisions():
    assert retinanet_anchor_sizes(STRIDES) == _default_anchorgen().sizes


def test_anchors_are_placed_as_torchvision_places_them():
    """A 160 x 256 batch: P6 is 3 x 4 (strides 53 and 64), P7 2 x 2 (80 and 128)."""
    feat_sizes = [(20, 32), (10, 16), (5, 8), (3, 4), (2, 2)]
    ours, counts = AnchorGenerator(STRIDES, retinanet_anchor_sizes(STRIDES))(
        feat_sizes, image_size=(160, 256)
    )
    images = ImageList(torch.zeros(1, 3, 160, 256), [(160, 256)])
    features = [torch.zeros(1, 1, h, w) for h, w in feat_sizes]
    expected = _default_anchorgen()(images, features)[0]
    assert counts == [h * w * 9 for h, w in feat_sizes]
    assert torch.equal(ours, expected)


def test_assignment_equals_torchvision_matcher_per_image():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(500, 2, generator=g) * 200
    anchors = torch.cat([xy, xy + 8 + torch.rand(500, 2, generator=g) * 60], 1)  # [A, 4]
    counts = [4, 0, 1, 7]
    gt_boxes, gt_labels, gt_mask = (
        torch.zeros(4, 7, 4),
        torch.full((4, 7), -1),
        torch.zeros(4, 7, dtype=torch.bool),
    )
    for i, n in enumerate(counts):
        xy = torch.rand(n, 2, generator=g) * 180
        gt_boxes[i, :n] = torch.cat([xy, xy + 10 + torch.rand(n, 2, generator=g) * 50], 1)
        gt_labels[i, :n] = torch.randint(0, 5, (n,), generator=g)
        gt_mask[i, :n] = True
    found = assign_anchors(anchors, gt_boxes, gt_labels, gt_mask)
    matcher = Matcher(0.5, 0.4, allow_low_quality_matches=True)
    for i, n in enumerate(counts):
        if n == 0:
            matched = torch.full((500,), -1)
        else:
            matched = matcher(box_iou(gt_boxes[i, :n], anchors))
        assert torch.equal(found.foreground[i], matched >= 0)
        assert torch.equal(found.valid[i], matched != Matcher.BETWEEN_THRESHOLDS)
        fg = matched >= 0
        assert torch.equal(found.labels[i][fg], gt_labels[i][matched[fg]])
        assert torch.equal(found.boxes[i][fg], gt_boxes[i][matched[fg]])
        assert (found.labels[i][~fg] == -1).all()


def test_p6_from_c5_equals_torchvisions_last_level_p6p7():
    torch.manual_seed(0)
    ours = FPN([8, 16, 32], [8, 16, 32], 12, extra_levels=2, extra_from="backbone")
    reference = FeaturePyramidNetwork([8, 16, 32], 12, extra_blocks=LastLevelP6P7(32, 12))
    state = {
        key.replace("extra_blocks.p6.", "extra_blocks.convs.0.").replace(
            "extra_blocks.p7.", "extra_blocks.convs.1."
        ): v
        for key, v in reference.state_dict().items()
    }
    ours.fpn.load_state_dict(state)
    x = [torch.randn(2, c, s, s) for c, s in ((8, 16), (16, 8), (32, 4))]
    expected = list(reference(dict(zip("abc", x))).values())
    for got, want in zip(ours(x), expected, strict=True):
        torch.testing.assert_close(got, want)
    assert ours.strides == STRIDES


def test_converter_maps_legacy_layers_and_drops_the_background_row():
    """Checkpoints before torchvision's version-2 heads name the subnet convs ``conv.<2 i>``; the class layer
    holds K = C + 1 rows per anchor, the first of them background."""
    anchors, classes = 9, 3
    logits = torch.arange(anchors * (classes + 1), dtype=torch.float32)
    state = {
        "head.classification_head.conv.2.weight": torch.ones(1),
        "head.regression_head.conv.1.0.bias": torch.ones(1),
        "head.classification_head.cls_logits.weight": logits[:, None, None, None].clone(),
        "head.classification_head.cls_logits.bias": logits.clone(),
        "head.regression_head.bbox_reg.weight": torch.zeros(anchors * 4, 1, 3, 3),
        "backbone.fpn.extra_blocks.p7.bias": torch.zeros(1),
        "backbone.body.bn1.num_batches_tracked": torch.tensor(0),
    }
    out = convert_retinanet(state)
    assert set(out) == {
        "head.cls_subnet.1.0.weight",
        "head.box_subnet.1.0.bias",
        "head.cls_logits.weight",
        "head.cls_logits.bias",
        "head.bbox_reg.weight",
        "features.fpn.fpn.extra_blocks.convs.1.bias",
    }
    kept = torch.tensor([a * (classes + 1) + k for a in range(anchors) for k in range(1, classes + 1)])
    assert torch.equal(out["head.cls_logits.bias"], kept.float())
    with pytest.raises(KeyError):
        convert_retinanet({**state, "roi_heads.x": torch.zeros(1)})


def test_prefix_builder_and_options():
    model = create_model("retinanet_resnet18", num_classes=4, extra_from="backbone", head_norm="GN")
    assert isinstance(model, RetinaNet) and model.strides == STRIDES
    assert model.features.fpn.fpn.extra_blocks.convs[0].in_channels == 512  # C5 of resnet18
    with pytest.raises(ValueError, match="box_loss"):
        create_model("retinanet_n", box_loss="mse")
    with pytest.raises(ValueError, match="head_norm"):
        create_model("retinanet_n", head_norm="BN")


@pytest.mark.parametrize("box_loss", ["l1", "smooth_l1", "giou"])
def test_box_losses_equal_torchvisions(box_loss):
    """The per-image box loss of the foreground anchors against torchvision's ``_box_loss`` (the smooth L1 with
    detectron's beta 0.1, through its ``cnf``)."""
    g = torch.Generator().manual_seed(2)
    xy = torch.rand(300, 2, generator=g) * 100
    anchors = torch.cat([xy, xy + 16 + torch.rand(300, 2, generator=g) * 40], 1)  # [A, 4]
    gt_boxes = anchors[None, [3, 50, 120]] + torch.randn(2, 3, 4, generator=g)  # [B, G, 4] near some anchors
    gt_labels, gt_mask = (
        torch.zeros(2, 3, dtype=torch.long),
        torch.tensor([[True, True, True], [True, False, False]]),
    )
    deltas = torch.randn(2, 300, 4, generator=g) * 0.1
    coder = AnchorBoxCoder()
    criterion = RetinaNetLoss(1, coder, box_loss=box_loss, smooth_l1_beta=0.1)
    targets = assign_anchors(anchors, gt_boxes, gt_labels, gt_mask)
    found = criterion._regression(deltas, anchors, targets)  # [B]
    tv_coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
    for i in range(2):
        fg = targets.foreground[i]
        expected = _box_loss(
            box_loss, tv_coder, anchors[fg], targets.boxes[i][fg], deltas[i][fg], {"beta": 0.1}
        )
        torch.testing.assert_close(found[i], expected, rtol=1e-6, atol=1e-6)


def test_small_model_learns_a_batch():
    torch.manual_seed(0)
    model = create_model("retinanet_n", num_classes=3).train()
    images = torch.rand(2, 3, 64, 64)
    targets = [
        {
            "boxes": torch.tensor([[6.0, 8.0, 34.0, 40.0], [30.0, 20.0, 60.0, 50.0]]),
            "labels": torch.tensor([0, 2]),
        },
        {"boxes": torch.tensor([[12.0, 12.0, 48.0, 56.0]]), "labels": torch.tensor([1])},
    ]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    history = []
    for _ in range(8):
        _, losses = model.forward_loss(images, targets)
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
        history.append(float(losses["loss"].detach()))
    assert set(losses) == {"loss", "classification", "bbox_regression", "num_pos"}
    assert history[-1] < 0.7 * history[0], history
