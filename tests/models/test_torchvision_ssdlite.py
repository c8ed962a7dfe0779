"""``ssdlite320_mobilenet_v3_large`` against torchvision's, from torchvision's own state dict (offline).

torchvision's model is built with ``weights=None, weights_backbone=None`` (so with the reduced tail, as its
COCO weights), its BatchNorm affines randomised and its statistics calibrated on one random batch (so the
features depend on the image; random statistics alone either vanish or explode through the 17 layers), and
its head's last convs given wider random weights (spread scores: detections exist and are not tied). Its
state dict is saved and loaded through ``create_model(..., weights=path)``, i.e. the registered converter. Both
models resize to a small fixed 128 x 160 (torchvision's ``fixed_size`` is (w, h), detforge's (h, w)) to keep
CI fast; the per-class top-k (300 of the 660 default boxes) still binds. Losses: torchvision's training
forward against ``forward_loss`` on the batch its transform makes (un-normalised back to [0, 1]), targets
resized by it too, BatchNorm on batch statistics in both.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torchvision.models.detection import ssdlite320_mobilenet_v3_large as torchvision_ssdlite

from detforge.models.preprocess import Preprocess
from detforge.models.registry import create_model

NAME = "ssdlite320_mobilenet_v3_large"
SIZE = (128, 160)  # (h, w) both models resize to
IMAGE_SIZES = [(100, 140), (150, 120), (90, 200)]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    torch.manual_seed(0)
    reference = torchvision_ssdlite(weights=None, weights_backbone=None)
    g = torch.Generator().manual_seed(1)
    norms = [m for m in reference.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for bn in norms:
            bn.weight.copy_(0.5 + torch.rand(bn.num_features, generator=g))
            bn.bias.copy_(torch.randn(bn.num_features, generator=g) * 0.2)
            bn.momentum = 1.0  # the next training forward sets the statistics
        reference.train()
        reference.head(list(reference.backbone(torch.rand(4, 3, *SIZE, generator=g) * 2 - 1).values()))
        for bn in norms:
            bn.momentum = 0.03
        for block in reference.head.classification_head.module_list:
            block[1].weight.normal_(0, 0.1, generator=g)
            block[1].bias.normal_(0, 1.0, generator=g)
        for block in reference.head.regression_head.module_list:
            block[1].weight.normal_(0, 0.05, generator=g)
    reference.transform.fixed_size = (SIZE[1], SIZE[0])  # torchvision's (w, h)
    path = tmp_path_factory.mktemp("ssdlite") / "ssdlite.pth"
    torch.save(reference.state_dict(), path)
    ours = create_model(NAME, weights=str(path))
    assert ours.preprocess.fixed_size == (320, 320)  # the COCO weights' own pre-processing
    ours.preprocess = Preprocess(
        resize="fixed", fixed_size=SIZE, size_divisible=1, mean=(0.5,) * 3, std=(0.5,) * 3
    )
    return reference.eval(), ours.eval()


def _images() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return [torch.rand(3, h, w, generator=g) for h, w in IMAGE_SIZES]


def _assert_same_detections(det: dict, tv_det: dict, where: str) -> int:
    """Boxes within 1e-3 px, scores within 1e-5, labels equal (ours + 1), in the same order, except that
    detections whose scores are within 1e-5 of each other may come in either order (the two models' scores
    differ by float rounding: torchvision normalises before resizing, detforge after). Returns the number
    of such swapped rows."""
    boxes, scores, labels = (
        det["boxes"],
        det["scores"],
        det["labels"] + 1,
    )  # detforge 0..89 = torchvision 1..90
    assert boxes.shape[0] == tv_det["boxes"].shape[0] == 300, f"{where}: detection counts"
    torch.testing.assert_close(scores, tv_det["scores"], atol=1e-5, rtol=0, msg=f"{where}: scores")
    same = ((boxes - tv_det["boxes"]).abs().amax(1) <= 1e-3) & (labels == tv_det["labels"])  # [K]
    for i in (~same).nonzero().flatten().tolist():
        tie = (tv_det["scores"] - scores[i]).abs() < 1e-5  # [K] torchvision's rows of a near-equal score
        found = tie & ((tv_det["boxes"] - boxes[i]).abs().amax(1) <= 1e-3) & (tv_det["labels"] == labels[i])
        assert found.any(), f"{where}: detection {i} ({labels[i]}, {boxes[i].tolist()}) not in torchvision's"
    return int((~same).sum())


@pytest.mark.parametrize("case", ["image 0", "image 1", "image 2", "mixed batch"])
def test_predict_equals_torchvision(models, case):
    reference, ours = models
    images = _images()
    images = images if case == "mixed batch" else [images[int(case[-1])]]
    with torch.no_grad():
        expected = reference.eval()(images)
    found = ours.predict(images)
    swapped = [
        _assert_same_detections(d, e, f"image {i}")
        for i, (d, e) in enumerate(zip(found, expected, strict=True))
    ]
    assert sum(swapped) <= 4, f"{swapped} detections out of order"


def _targets() -> list[dict]:
    g = torch.Generator().manual_seed(5)
    targets = []
    for (h, w), n in zip(IMAGE_SIZES, [3, 1, 5]):
        xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
        wh = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.4, h * 0.4]) + 4
        boxes = torch.cat([xy, (xy + wh).minimum(torch.tensor([w, h]))], 1)
        targets.append({"boxes": boxes, "labels": torch.randint(0, 90, (n,), generator=g)})
    return targets


def test_training_losses_equal_torchvision(models):
    reference, ours = (copy.deepcopy(m).train() for m in models)  # training moves BatchNorm statistics
    images, targets = _images(), _targets()
    tv_targets = [{"boxes": t["boxes"], "labels": t["labels"] + 1} for t in targets]
    batch, resized = reference.transform(images, tv_targets)
    expected = reference(images, tv_targets)
    ours_targets = [{"boxes": t["boxes"], "labels": t["labels"] - 1} for t in resized]
    _, losses = ours.forward_loss(batch.tensors * 0.5 + 0.5, ours_targets)  # back to [0, 1]
    assert tuple(batch.tensors.shape[-2:]) == SIZE
    for key in ("bbox_regression", "classification"):
        assert expected[key] > 0, key
        torch.testing.assert_close(losses[key], expected[key].detach(), atol=1e-5, rtol=1e-5, msg=key)
    torch.testing.assert_close(losses["loss"].detach(), sum(expected.values()).detach(), atol=2e-5, rtol=1e-5)


def test_onnx_detections_equal_pytorch(models, tmp_path):
    """Per-class top-k and NMS in the graph, exported at batch 1 and run at batch 2 (dynamic batch), on the
    spread scores of these weights (a model fresh from initialisation has no detections to compare). Within
    1e-3: boxes of ~100 px differ by up to ~1e-4 px between the BatchNorm-folded graph and the model."""
    from detforge.export import check_onnx, export_onnx

    model = copy.deepcopy(models[1])
    model.set_postprocess(score_thresh=0.05)  # fewer candidates: onnxruntime's NMS is quadratic
    images = torch.rand(2, 3, *SIZE, generator=torch.Generator().manual_seed(7))
    path = export_onnx(
        model,
        tmp_path / "ssdlite.onnx",
        example_input=images[:1],
        with_nms=True,
        dynamic_axes={"images": {0: "b"}},
    )
    with torch.no_grad():
        assert (model.export_detections(images=images)["num_detections"] > 100).all()
    assert check_onnx(model, path, images) < 1e-3


def test_keep_classes_copies_the_class_rows(models, tmp_path):
    """A fine-tune to 2 classes keeps "dog" (COCO id 18: column 18 of each box's 91) and the background."""
    reference, _ = models
    path = tmp_path / "ssdlite.pth"
    torch.save(reference.state_dict(), path)
    model = create_model(NAME, weights=str(path), num_classes=2, keep_classes=["dog", "zebra-ish"])
    assert model.kept_classes == ["dog"]
    source = reference.head.classification_head.module_list[0][1].weight.reshape(6, 91, -1)  # [A, 91, C_in]
    target = model.head.cls_blocks[0][1].weight.reshape(6, 3, -1)
    assert torch.equal(target[:, 0], source[:, 0]) and torch.equal(target[:, 1], source[:, 18])
    assert not torch.equal(target[:, 2], source[:, 1])  # the new class starts anew
