"""The SSD family's parts: default-box matching, hard-negative mining, the MobileNetV3 body's ImageNet files and
input channels, training from scratch. Exactness against torchvision: tests/models/test_torchvision_ssdlite.py."""

from __future__ import annotations

import torch
from torchvision.models import mobilenet_v3_large

from detforge.models.ssd import SSD
from detforge.models.ssd.loss import hard_negatives, match_default_boxes


def test_matching_thresholds_and_forced_best_default_box():
    anchors = torch.tensor([[0, 0, 10, 10], [0, 0, 20, 20], [50, 50, 60, 60], [100, 100, 140, 140.0]])
    gt = torch.tensor(
        [[[0, 0, 10, 10], [1, 1, 19, 19], [52, 52, 70, 70], [0, 0, 0, 0]]], dtype=torch.float32
    )  # [1, G=4, 4], the last one padding
    mask = torch.tensor([[True, True, True, False]])
    matched = match_default_boxes(anchors, gt, mask, 0.5)
    # anchor 0: IoU 1 with box 0; anchor 1: box 1 (IoU 0.81); anchor 2: box 2's best anchor although its
    # IoU is 64 / 360 < 0.5; anchor 3: nothing (the padded box, whose argmax is anchor 0, is ignored)
    assert matched.tolist() == [[0, 1, 2, -1]]
    # two boxes whose best default box is the same: the later box takes it (torchvision's index assignment)
    twins = torch.tensor([[[0, 0, 9, 9], [0, 0, 8, 8]]], dtype=torch.float32)
    assert match_default_boxes(anchors, twins, torch.ones(1, 2, dtype=torch.bool), 0.5)[0, 0] == 1
    # no boxes at all: every default box is background
    empty = match_default_boxes(anchors, torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.bool), 0.5)
    assert empty.shape == (2, 4) and (empty == -1).all()


def test_hard_negatives_take_the_highest_losses_three_per_positive():
    g = torch.Generator().manual_seed(0)
    cls_loss = torch.rand(2, 50, generator=g)
    positive = torch.zeros(2, 50, dtype=torch.bool)
    positive[0, [3, 7]] = True  # image 1 has no positive: no negatives either
    chosen = hard_negatives(cls_loss, positive, 3.0)
    assert chosen.sum(1).tolist() == [6, 0] and not (chosen & positive).any()
    negatives = cls_loss[0].masked_fill(positive[0], -1)
    assert set(chosen[0].nonzero().flatten().tolist()) == set(negatives.topk(6).indices.tolist())


def test_imagenet_file_loads_into_the_body(tmp_path):
    torch.manual_seed(0)
    net = mobilenet_v3_large(weights=None)
    path = tmp_path / "mobilenet_v3_large-test.pth"
    torch.save(net.state_dict(), path)
    model = SSD(
        num_classes=3, pretrained=str(path)
    )  # torchvision's rule: no reduced tail with ImageNet weights
    for name, tensor in model.backbone.body.state_dict().items():
        assert torch.equal(tensor, net.state_dict()[f"features.{name}"]), name
    gray = SSD(num_classes=3, pretrained=str(path), in_chans=1)  # the stem summed over RGB (timm's rule)
    stem = net.state_dict()["features.0.0.weight"].sum(1, keepdim=True)
    torch.testing.assert_close(gray.backbone.body[0][0].weight, stem)
    assert gray.eval()(torch.rand(1, 1, 64, 96))["cls_logits"].shape == (1, 210, 4)


def test_trains_from_scratch():
    """A few SGD steps on one image lower the loss (random init, the protocol's targets)."""
    torch.manual_seed(0)
    model = SSD(num_classes=2, backbone="mobilenet_v3_small").train()
    images = torch.rand(2, 3, 96, 96)
    targets = [
        {"boxes": torch.tensor([[10.0, 20.0, 60.0, 70.0]]), "labels": torch.tensor([1])},
        {
            "boxes": torch.tensor([[30.0, 5.0, 90.0, 40.0], [5.0, 50.0, 40.0, 90.0]]),
            "labels": torch.tensor([0, 1]),
        },
    ]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(8):
        _, loss = model.forward_loss(images, targets)
        optimizer.zero_grad()
        loss["loss"].backward()
        optimizer.step()
        losses.append(float(loss["loss"].detach()))
    assert set(loss) == {"loss", "bbox_regression", "classification", "num_pos"}
    assert losses[-1] < 0.5 * losses[0], losses
