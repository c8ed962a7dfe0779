"""The checks every Detector runs before a loss (detforge.models.base): inverted / normalized-looking boxes and
a torchvision-tutorial batch (a tuple of images) get a clear error or warning, for every model, through the
base class."""

import pytest
import torch

from detforge.models.registry import create_model


@pytest.fixture(scope="module")
def fcos():
    return create_model("fcos_test_resnet", num_classes=3, fpn_channels=16, head_num_convs=1, extra_levels=0)


def _target(boxes, **extra):
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    return {"boxes": boxes, "labels": torch.zeros(len(boxes), dtype=torch.int64), **extra}


def test_inverted_box_raises_in_loss_and_forward_loss(fcos):
    images = torch.rand(2, 3, 64, 96)
    targets = [_target([[4, 4, 20, 20]]), _target([[30, 10, 10, 40]], image_id=5)]
    with pytest.raises(ValueError, match=r"image_id 5 has an inverted box \[30\.0, 10\.0, 10\.0, 40\.0\]"):
        fcos.forward_loss(images, targets)
    with pytest.raises(ValueError, match="image_id 5"):
        fcos.loss(fcos(images), targets)


def test_normalized_boxes_warn_once(fcos):
    images = torch.rand(2, 3, 64, 96)
    targets = [_target([[0.1, 0.1, 0.4, 0.5]]), _target([[0.2, 0.3, 0.9, 1.0], [0, 0, 0.5, 0.5]])]
    with pytest.warns(UserWarning, match=r"2 of 2 image\(s\).*look normalized.*image 0 of the batch") as rec:
        _, losses = fcos.forward_loss(images, targets)
    assert len([w for w in rec if "normalized" in str(w.message)]) == 1
    assert torch.isfinite(losses["loss"])


def test_edge_training_steps_check_boxes():
    from detforge.models.edge import Nexus, Phantom, nexus_training_step, phantom_training_step

    nexus, phantom = Nexus(num_classes=2), Phantom()
    frame = torch.rand(3, 64, 96)
    opt = torch.optim.SGD(nexus.parameters(), lr=0.0)
    with pytest.warns(UserWarning, match="look normalized"):
        nexus_training_step(nexus, frame, torch.tensor([[0.1, 0.1, 0.5, 0.5]]), torch.tensor([1]), opt)
    with pytest.raises(ValueError, match="inverted box"):
        nexus_training_step(nexus, frame, torch.tensor([[50.0, 10.0, 20.0, 30.0]]), torch.tensor([1]), opt)
    opt = torch.optim.SGD(phantom.parameters(), lr=0.0)
    gray = torch.rand(1, 64, 96) if phantom.in_chans == 1 else frame
    with pytest.warns(UserWarning, match="look normalized"):
        phantom_training_step(phantom, gray, torch.tensor([[0.1, 0.1, 0.5, 0.5]]), opt)


@pytest.mark.parametrize("make", [tuple, list])
def test_tutorial_batch_is_a_clear_type_error(fcos, make):
    images = make(torch.rand(3, 64, 96) for _ in range(2))
    targets = (_target([[4, 4, 20, 20]]), _target([[10, 10, 40, 40]]))
    for call in (lambda: fcos(images), lambda: fcos.forward_loss(images, targets)):
        with pytest.raises(TypeError, match=r"Tensor\[B, C, H, W\].*detection_collate"):
            call()
    with pytest.raises(TypeError, match=r"got a Tensor of shape \(3, 64, 96\)"):
        fcos.forward_loss(images[0], targets)
