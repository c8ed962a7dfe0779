"""``fcos_resnet50_fpn`` against torchvision's, with the same random weights loaded through the COCO converter.

The reference is torchvision's ``fcos_resnet50_fpn(weights=None, weights_backbone=None)`` (seed 0) at
``min_size=160`` / ``max_size=256`` to keep CI fast, and ours is ``create_model(..., weights=<its saved state
dict>)`` with the same small :class:`Preprocess`. BatchNorm statistics and affines are random and the
reference's BatchNorm stays in eval mode (the COCO model's ``FrozenBatchNorm2d``; ours is frozen); the head's
weights are larger than their initialisation so that detections exist with spread scores. torchvision's
background logit (class index 0, which the converter drops: a sigmoid head has no background class) gets
bias -30, so it never passes the score threshold in the reference either. Labels: ours + 1 == torchvision's.
"""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection import fcos_resnet50_fpn as torchvision_fcos
from torchvision.models.detection.image_list import ImageList

from detforge.boxes import padded_strides
from detforge.models.preprocess import Preprocess
from detforge.models.registry import create_model
from detforge.models.weights import get_weights

MIN_SIZE, MAX_SIZE = 160, 256
# (h, w) of the three test images: resized to 154 x 256, 160 x 231 and 213 x 160, padded batches of 160 x 256,
# 224 x 160 and (together) 224 x 256, where P6 / P7 are not at the nominal strides 64 / 128 (e.g. 160 // 3 = 53)
SIZES = [(120, 200), (90, 130), (200, 150)]
MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]


def _randomise(reference: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(1)

    def fill(tensor: torch.Tensor, kind: str, a: float, b: float) -> None:
        if kind == "normal":
            tensor.copy_(torch.randn(tensor.shape, generator=g) * b + a)
        else:
            tensor.copy_(torch.rand(tensor.shape, generator=g) * (b - a) + a)

    with torch.no_grad():
        for bn in reference.backbone.body.modules():
            if isinstance(bn, torch.nn.BatchNorm2d):
                fill(bn.weight, "uniform", 0.5, 1.5), fill(bn.bias, "normal", 0.0, 0.1)
                fill(bn.running_mean, "normal", 0.0, 0.1), fill(bn.running_var, "uniform", 0.5, 1.5)
        head = reference.head
        for gn in head.modules():
            if isinstance(gn, torch.nn.GroupNorm):
                fill(gn.weight, "uniform", 0.5, 1.5), fill(gn.bias, "normal", 0.0, 0.2)
        for conv in list(head.classification_head.conv) + list(head.regression_head.conv):
            if isinstance(conv, torch.nn.Conv2d):
                fill(conv.bias, "normal", 0.0, 0.1)
        cls, reg = head.classification_head.cls_logits, head.regression_head.bbox_reg
        ctr = head.regression_head.bbox_ctrness
        # class logits far below zero: 6-27 detections per image, fewer than the 100 kept, scores apart
        fill(cls.weight, "normal", 0.0, 0.05), fill(cls.bias, "normal", -6.75, 0.5)
        cls.bias[0] = -30.0  # torchvision's background: never above the score threshold
        fill(reg.weight, "normal", 0.0, 0.02), fill(reg.bias, "uniform", 0.5, 3.0)
        fill(ctr.weight, "normal", 0.0, 0.02), fill(ctr.bias, "normal", 0.0, 0.5)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    torch.manual_seed(0)
    reference = torchvision_fcos(weights=None, weights_backbone=None, min_size=MIN_SIZE, max_size=MAX_SIZE)
    _randomise(reference)
    path = tmp_path_factory.mktemp("weights") / "fcos_resnet50_fpn_random.pth"
    torch.save(reference.state_dict(), path)
    ours = create_model("fcos_resnet50_fpn", weights=str(path), min_size=MIN_SIZE, max_size=MAX_SIZE)
    ours.preprocess = Preprocess(resize="shortest_edge", min_size=MIN_SIZE, max_size=MAX_SIZE)
    return reference, ours


def test_the_coco_weights_build_torchvision_backbone_training(models):
    """Every backbone BatchNorm frozen, the stem and layer1 frozen (``trainable_backbone_layers=3``), COCO's
    90 classes; from scratch (no weights) everything trains."""
    _, ours = models
    body = ours.features.body
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in body.modules())
    trainable = {name.split(".")[0] for name, p in body.named_parameters() if p.requires_grad}
    assert trainable == {"layer2", "layer3", "layer4"}
    assert sum(p.numel() for p in ours.parameters()) == get_weights("fcos_resnet50_fpn", "coco").num_params
    assert ours.num_classes == 90 and ours.class_names[0] == "person" and ours.category_ids[-1] == 90
    with torch.device("meta"):
        scratch = create_model("fcos_resnet50_fpn")
    assert all(p.requires_grad for p in scratch.parameters())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in scratch.features.body.modules())


def _images() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return [torch.rand(3, h, w, generator=g) for h, w in SIZES]


def _ties_by_box(det: dict, groups: torch.Tensor) -> dict:
    """``det`` reordered inside each group of near-equal scores by label, then box: their order is the
    rounding's (torchvision normalises before resizing, ours after), not the model's."""
    order = []
    for group in groups.unique():
        idx = (groups == group).nonzero()[:, 0]
        keys = torch.cat([det["labels"][idx, None].float(), det["boxes"][idx]], 1).round(decimals=1).tolist()
        order += [int(idx[j]) for j in sorted(range(len(idx)), key=lambda j: keys[j])]
    return {key: value[order] for key, value in det.items()}


def _assert_same_detections(found: list[dict], expected: list[dict]) -> None:
    """Same detections in the same order (best first); detections whose scores differ by less than the
    tolerance may swap places."""
    for i, (det, ref) in enumerate(zip(found, expected, strict=True)):
        assert det["boxes"].shape[0] == ref["boxes"].shape[0] > 0, (
            f"image {i}: {det['boxes'].shape[0]} detections, torchvision {ref['boxes'].shape[0]}"
        )
        torch.testing.assert_close(det["scores"], ref["scores"], atol=1e-5, rtol=0, msg=f"image {i}: scores")
        gaps = ref["scores"][:-1] - ref["scores"][1:]  # [K - 1] >= 0
        groups = torch.cat([torch.zeros(1, dtype=torch.long), (gaps > 1e-5).long().cumsum(0)])  # [K]
        det, ref = _ties_by_box(dict(det, labels=det["labels"] + 1), groups), _ties_by_box(ref, groups)
        torch.testing.assert_close(det["boxes"], ref["boxes"], atol=1e-3, rtol=0, msg=f"image {i}: boxes")
        assert torch.equal(det["labels"], ref["labels"]), f"image {i}: labels"


@pytest.mark.parametrize("case", ["image 0", "image 1", "image 2", "mixed batch"])
def test_predict_equals_torchvision(models, case):
    reference, ours = models
    images = _images()
    if case != "mixed batch":
        images = [images[int(case[-1])]]
    with torch.no_grad():
        expected = reference.eval()(images)
    _assert_same_detections(ours.predict(images), expected)


def _targets() -> list[dict]:
    """Per image: 4, 1 and 6 boxes in its own pixels (detforge labels 0..89)."""
    g = torch.Generator().manual_seed(5)
    targets = []
    for (h, w), n in zip(SIZES, (4, 1, 6), strict=True):
        xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
        wh = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.4, h * 0.4]) + 4
        boxes = torch.cat([xy, (xy + wh).minimum(torch.tensor([w, h]))], 1)
        targets.append({"boxes": boxes, "labels": torch.randint(0, 90, (n,), generator=g)})
    return targets


def test_training_losses_equal_torchvision(models):
    reference, ours = models
    images, targets = _images(), _targets()
    tv_targets = [{"boxes": t["boxes"], "labels": t["labels"] + 1} for t in targets]
    reference.train()
    for bn in reference.backbone.body.modules():  # the COCO model's BatchNorm is frozen
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.eval()
    with torch.no_grad():
        expected = reference(images, tv_targets)
        batch, resized = reference.transform(images, [dict(t) for t in tv_targets])
    reference.eval()
    inputs = batch.tensors * STD + MEAN  # back to [0, 1]: ours normalises inside; the padding is the mean
    ours_targets = [{"boxes": t["boxes"], "labels": t["labels"] - 1} for t in resized]
    ours.train()
    try:
        with torch.no_grad():
            _, losses = ours.forward_loss(inputs, ours_targets)
    finally:
        ours.eval()
    for key in ("classification", "bbox_regression", "bbox_ctrness"):
        assert expected[key] > 0, key
        torch.testing.assert_close(losses[key], expected[key], atol=1e-5, rtol=1e-5, msg=key)
    torch.testing.assert_close(losses["loss"], sum(expected.values()), atol=3e-5, rtol=1e-5)


def test_every_location_decodes_as_torchvision(models):
    """Scores and boxes of every location of the mixed batch (224 x 256: P6 / P7 step (56, 64) / (112, 128)
    pixels, torchvision's anchor centres), not only those that survive NMS."""
    reference, ours = models
    with torch.no_grad():
        batch, _ = reference.eval().transform(_images())
        features = list(reference.backbone(batch.tensors).values())
        head = reference.head(features)
        anchors = torch.stack(reference.anchor_generator(batch, features))  # [B, P, 4]
        tv_boxes = reference.box_coder.decode(head["bbox_regression"], anchors)  # [B, P, 4]
        tv_scores = (head["cls_logits"][..., 1:].sigmoid() * head["bbox_ctrness"].sigmoid()).sqrt()
        outputs = ours.eval()(batch.tensors * STD + MEAN)
        scores, boxes = ours.decode(outputs)
    assert padded_strides(outputs["image_size"], outputs["feat_sizes"])[-2:] == [(56, 64), (112, 128)]
    torch.testing.assert_close(scores, tv_scores, atol=1e-5, rtol=0)
    torch.testing.assert_close(boxes, tv_boxes, atol=1e-3, rtol=0)


def test_matching_and_losses_equal_torchvision_on_a_large_input(models):
    """The loss alone (random head outputs, no network) on an 800 x 1216 input, where every level has
    positives and P6 / P7 step (61, 64) / (114, 121) pixels; two overlapping boxes whose areas differ by less
    than float32's step at 1e8 tie in torchvision's match score and go to the lower GT index."""
    reference, ours = models
    g = torch.Generator().manual_seed(11)
    feat_sizes = [(100, 152), (50, 76), (25, 38), (13, 19), (7, 10)]
    num = sum(h * w for h, w in feat_sizes)
    batch = ImageList(torch.zeros(2, 3, 800, 1216), [(800, 1216), (760, 1100)])
    features = [torch.zeros(2, 1, h, w) for h, w in feat_sizes]
    anchors = reference.anchor_generator(batch, features)  # B x [P, 4]
    head = {
        "cls_logits": torch.randn(2, num, 91, generator=g) - 4.0,  # near the prior: a loss of a few units
        "bbox_regression": torch.rand(2, num, 4, generator=g) * 4,
        "bbox_ctrness": torch.randn(2, num, 1, generator=g),
    }
    head["cls_logits"][..., 0] = -30.0  # the background row ours does not have
    targets = []
    for (h, w), n in zip(batch.image_sizes, (14, 9), strict=True):
        wh = torch.exp(torch.rand(n, 2, generator=g) * 4.5 + 2.0)  # 7 to 665 px
        wh = wh.minimum(torch.tensor([w - 1.0, h - 1.0]))
        xy = torch.rand(n, 2, generator=g) * (torch.tensor([w, h]) - wh)
        boxes = torch.cat([xy, xy + wh], 1)
        targets.append({"boxes": boxes, "labels": torch.randint(1, 91, (n,), generator=g)})
    tie = [[300.0, 300.0, 400.02, 399.99], [301.0, 300.0, 401.0, 400.0]]  # areas 10001, 10000: a tie
    large = [[100.0, 100.0, 700.0, 700.0], [50.0, 30.0, 1150.0, 790.0]]  # P6, P7
    targets[0]["boxes"] = torch.cat([targets[0]["boxes"], torch.tensor(tie + large)])
    targets[0]["labels"] = torch.cat([targets[0]["labels"], torch.tensor([5, 7, 9, 11])])
    expected = reference.compute_loss(targets, head, anchors, [h * w for h, w in feat_sizes])

    sizes = torch.cat([torch.full((h * w,), 8.0 * 2**i) for i, (h, w) in enumerate(feat_sizes)])  # [P]
    outputs = {
        "cls_logits": head["cls_logits"][..., 1:],
        "box_reg": head["bbox_regression"] * sizes[:, None],  # torchvision's codes are in anchor sizes
        "centerness": head["bbox_ctrness"][..., 0],
        "feat_sizes": feat_sizes,
        "image_size": (800, 1216),
    }
    assert ours.point_strides(outputs)[-2:] == [(61, 64), (114, 121)]
    losses = ours.loss(outputs, [{"boxes": t["boxes"], "labels": t["labels"] - 1} for t in targets])
    for key in ("classification", "bbox_regression", "bbox_ctrness"):
        torch.testing.assert_close(losses[key], expected[key], atol=1e-5, rtol=1e-5, msg=key)
    assigned = ours.assigner(
        feat_sizes, targets[0]["boxes"][None], targets[0]["labels"][None], torch.ones(1, 18, dtype=torch.bool),
        ours.point_strides(outputs),
    )  # fmt: skip
    assert (assigned.matched_gt == 14).any() and not (assigned.matched_gt == 15).any()  # the tie: lower index
    levels = torch.cat([torch.full((h * w,), i) for i, (h, w) in enumerate(feat_sizes)])
    assert set(levels[(assigned.labels[0] >= 0)].tolist()) == {0, 1, 2, 3, 4}  # positives on every level
