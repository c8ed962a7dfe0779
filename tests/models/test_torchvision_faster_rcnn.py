"""torchvision's four COCO Faster R-CNN models loaded into detforge: the same detections and losses.

Each reference is torchvision's builder (``weights=None, weights_backbone=None``) in the structure of its COCO
weights: the backbone's BatchNorm as ``FrozenBatchNorm2d`` with the checkpoint's eps (0 for the ResNet-50 v1,
torchvision's ``overwrite_eps``; 1e-5 for MobileNetV3), trainable BatchNorm for v2. Every BatchNorm gets random
statistics and affine; the RPN's and box predictor's layers (and the MobileNetV3 models' two FC layers, whose
inputs barely differ between RoIs) get random weights scaled to the features they see on the test images
(objectness logits of rms ~1.5, class logits of rms ~2), and the background logit an offset that leaves every
image, alone and in the batch, at least 20 (RoI, class) pairs above the 0.05 threshold and none at it: a few
tens of detections per image. Both models run at 160 / 256 px (torchvision's ``min_size`` / ``max_size``) to
keep CI fast; the reference's state dict is saved and loaded with ``create_model(name, weights=path)``, and
``predict`` (detforge's resize and padding, channels-last convolutions) is compared with the reference's
``forward`` on a list of images: the differences are float rounding (largest seen: scores 1e-6, boxes 2e-4 px).

Training losses take every anchor and RoI (sampler sizes above the candidate counts), so neither sampler draws
at random; the detforge model gets the batch and targets ``reference.transform`` makes (the batch mapped back
to [0, 1]: detforge normalises inside its forward).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torchvision.models import detection
from torchvision.ops.misc import FrozenBatchNorm2d

from detforge.models.registry import create_model
from detforge.models.torchvision_zoo.faster_rcnn import torchvision_preprocess

# model -> eps of the COCO checkpoint's frozen backbone BatchNorm (None: trainable BatchNorm, v2)
MODELS = {
    "fasterrcnn_resnet50_fpn": 0.0,
    "fasterrcnn_resnet50_fpn_v2": None,
    "fasterrcnn_mobilenet_v3_large_fpn": 1e-5,
    "fasterrcnn_mobilenet_v3_large_320_fpn": 1e-5,
}
# torchvision's v2 trains its backbone's BatchNorm (detforge's default freezes it): the training losses match
# with batch statistics in both
OURS = {"fasterrcnn_resnet50_fpn_v2": {"frozen_batchnorm": False}}
SMALL = {"min_size": 160, "max_size": 256}
# the ResNet-50 models with fewer proposals (torchvision's 1000 / 2000 would cost their RoI heads ~10 s more)
FEWER = {
    "rpn_pre_nms_top_n_test": 300, "rpn_post_nms_top_n_test": 100,
    "rpn_pre_nms_top_n_train": 300, "rpn_post_nms_top_n_train": 100,
}  # fmt: skip
# the 800 px MobileNetV3 at inference with the 320 px model's 150 proposals: its 1000 are, on small images, nearly
# every anchor, down to RoIs smaller than a stride-32 cell at the image's corner, which pool the same features and
# tie exactly, so that NMS's order among them (its sort's) would decide which survive
MOBILENET_FEWER = {"rpn_pre_nms_top_n_test": 150, "rpn_post_nms_top_n_test": 150}
SIZES = [(120, 200), (200, 150), (100, 100)]  # padded to 160x256, 224x160, 160x160: odd "pool" maps
TAKE_ALL = 1_000_000
CLS_STD, CANDIDATES = 2.0, 20
MEAN, STD = (
    torch.tensor([0.485, 0.456, 0.406])[:, None, None],
    torch.tensor([0.229, 0.224, 0.225])[:, None, None],
)


def _freeze_batchnorm(module: torch.nn.Module, eps: float) -> None:
    for name, child in module.named_children():
        if isinstance(child, torch.nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=eps)
            for key in ("weight", "bias", "running_mean", "running_var"):
                getattr(frozen, key).copy_(getattr(child, key))
            setattr(module, name, frozen)
        else:
            _freeze_batchnorm(child, eps)


def _rescale(layer: torch.nn.Module, inputs: torch.Tensor, target: float, g: torch.Generator) -> None:
    """Random weights whose outputs on ``inputs`` (Tensor[N, fan_in]) have an rms of ~``target``."""
    rms = inputs.pow(2).mean().sqrt()
    layer.weight.copy_(
        torch.randn(layer.weight.shape, generator=g) * target / (rms * math.sqrt(inputs.shape[1]))
    )
    layer.bias.copy_(torch.randn(layer.bias.shape, generator=g) * target * 0.3)


def _images() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return [torch.rand(3, h, w, generator=g) for h, w in SIZES]


def _logits(reference: torch.nn.Module, images: list[torch.Tensor]) -> list[torch.Tensor]:
    """The box predictor's class logits of each image's proposals (Tensor[K_i, 91] per image)."""
    batch, _ = reference.transform(images)
    features = reference.backbone(batch.tensors)
    proposals, _ = reference.rpn(batch, features)
    heads = reference.roi_heads
    x = heads.box_head(heads.box_roi_pool(features, proposals, batch.image_sizes))
    return heads.box_predictor.cls_score(x).split([len(p) for p in proposals])


def _offset(logits: torch.Tensor, candidates: int) -> float:
    """The background offset that leaves ``candidates`` (RoI, class) pairs of ``logits`` above 0.05."""
    low, high = 0.0, 50.0
    background = torch.nn.functional.one_hot(torch.tensor(0), logits.shape[1])
    for _ in range(30):
        mid = (low + high) / 2
        passed = ((logits + background * mid).softmax(-1)[:, 1:] > 0.05).sum()
        low, high = (mid, high) if passed >= candidates else (low, mid)
    return low


def _options(name: str) -> dict:
    """torchvision keywords both models are built with: small images; fewer proposals for the ResNet-50s."""
    if name == "fasterrcnn_mobilenet_v3_large_fpn":
        return {**SMALL, **MOBILENET_FEWER}
    return {**SMALL, **FEWER} if "resnet50" in name else SMALL


@torch.no_grad()
def _reference(name: str) -> torch.nn.Module:
    eps = MODELS[name]
    torch.manual_seed(0)
    reference = getattr(detection, name)(weights=None, weights_backbone=None, **_options(name))
    if eps is not None:
        _freeze_batchnorm(reference.backbone.body, eps)
    g = torch.Generator().manual_seed(1)
    for m in reference.modules():
        if isinstance(m, FrozenBatchNorm2d | torch.nn.BatchNorm2d):
            m.weight.uniform_(0.5, 1.5, generator=g), m.bias.normal_(0, 0.1, generator=g)
            m.running_mean.normal_(0, 0.1, generator=g), m.running_var.uniform_(0.5, 1.5, generator=g)
    reference.eval()
    batch, _ = reference.transform(_images())  # calibrated on the test images
    features = reference.backbone(batch.tensors)
    t = torch.cat([reference.rpn.head.conv(f).flatten(2) for f in features.values()], 2)  # [B, C, N]
    t = t.transpose(1, 2).reshape(-1, t.shape[1])  # [B * N, C]
    _rescale(reference.rpn.head.cls_logits, t, 1.5, g)
    _rescale(reference.rpn.head.bbox_pred, t, 0.2, g)
    proposals, _ = reference.rpn(batch, features)
    heads = reference.roi_heads
    x = heads.box_roi_pool(features, proposals, batch.image_sizes)  # [K, C, 7, 7]
    if hasattr(heads.box_head, "fc6"):  # TwoMLPHead: features that differ between RoIs
        for fc in (heads.box_head.fc6, heads.box_head.fc7):
            x = x.flatten(1)
            _rescale(fc, x, 1.0, g)
            x = torch.relu(fc(x))  # [K, 1024]
    else:
        x = heads.box_head(x)  # [K, 1024]
    _rescale(heads.box_predictor.cls_score, x, CLS_STD, g)
    _rescale(heads.box_predictor.bbox_pred, x, 0.5, g)
    # the background's logit offset: the highest that leaves every image, alone and in the batch, at least
    # CANDIDATES (RoI, class) pairs above the 0.05 score threshold
    contexts = [[image] for image in _images()] + [_images()]
    offsets = [_offset(logits, CANDIDATES) for images in contexts for logits in _logits(reference, images)]
    heads.box_predictor.cls_score.bias[0] += min(offsets) - 0.05  # none left at the threshold
    return reference


@pytest.fixture(scope="module", params=list(MODELS))
def pair(request, tmp_path_factory):
    name = request.param
    reference = _reference(name)
    path = tmp_path_factory.mktemp(name) / "reference.pth"
    torch.save(reference.state_dict(), path)
    take_all = {"rpn_batch_size_per_image": TAKE_ALL, "box_batch_size_per_image": TAKE_ALL}
    options = _options(name)
    ours = create_model(name, weights=path, **options, **take_all, **OURS.get(name, {}))
    ours.preprocess = torchvision_preprocess(options["min_size"], options["max_size"])
    return name, reference, ours


def _assert_same(found: list[dict], expected: list[dict]) -> None:
    """Per image: as many detections; each of torchvision's (best first) has one of ours, not taken before,
    with its label (+ 1), its score within 1e-5 and its box within 1e-3 px. Both lists are sorted by score, so
    the order is the same up to detections whose scores differ by less than the tolerance (near-ties, whose
    order the rounding decides)."""
    for i, (det, ref) in enumerate(zip(found, expected, strict=True)):
        assert det["boxes"].shape[0] == ref["boxes"].shape[0] > 0, (
            f"image {i}: {len(det['boxes'])} detections"
        )
        assert (det["scores"][:-1] >= det["scores"][1:]).all()
        free = torch.ones(len(det["scores"]), dtype=torch.bool)
        for k in range(len(ref["scores"])):
            close = (
                free
                & ((det["scores"] - ref["scores"][k]).abs() <= 1e-5)
                & ((det["boxes"] - ref["boxes"][k]).abs().amax(1) <= 1e-3)
                & (det["labels"] + 1 == ref["labels"][k])
            )
            assert close.any(), (
                f"image {i}: torchvision's detection {k} ({ref['boxes'][k].tolist()}) not found"
            )
            free[int(close.nonzero()[0])] = False


@torch.no_grad()
def test_predict_equals_torchvision(pair):
    """One image of each size, then all three in one batch: boxes within 1e-3 px, scores within 1e-5,
    labels + 1 = torchvision's, in the same order (:func:`_assert_same`)."""
    _, reference, ours = pair
    images = _images()
    reference.eval()
    for image in images:
        _assert_same(ours.predict([image]), reference([image]))
    _assert_same(ours.predict(images), reference(images))


def _targets(g: torch.Generator) -> list[dict]:
    targets = []
    for i, (h, w) in enumerate(SIZES):
        n = (3, 1, 2)[i]
        xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
        wh = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.4, h * 0.4]) + 8
        boxes = torch.cat([xy, (xy + wh).minimum(torch.tensor([w, h]))], 1)
        targets.append({"boxes": boxes, "labels": torch.randint(1, 91, (n,), generator=g)})
    return targets


def test_training_losses_equal_torchvision(pair):
    """The four losses of one training forward (every anchor and RoI sampled) within 1e-5."""
    name, reference, ours = pair
    reference, ours = copy.deepcopy(reference).train(), copy.deepcopy(ours).train()
    reference.rpn.fg_bg_sampler.batch_size_per_image = TAKE_ALL
    reference.roi_heads.fg_bg_sampler.batch_size_per_image = TAKE_ALL
    g = torch.Generator().manual_seed(11)
    images, targets = _images(), _targets(g)
    expected = reference(images, targets)
    batch, resized = reference.transform(images, copy.deepcopy(targets))
    ours_targets = [
        {"boxes": t["boxes"], "labels": t["labels"] - 1, "size": torch.tensor(size)}
        for t, size in zip(resized, batch.image_sizes, strict=True)
    ]
    _, losses = ours.forward_loss(batch.tensors * STD + MEAN, ours_targets)
    for key in ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"):
        assert expected[key] > 0, key
        torch.testing.assert_close(
            losses[key], expected[key].detach(), atol=1e-5, rtol=1e-5, msg=f"{name} {key}"
        )
    total = sum(expected.values()).detach()
    torch.testing.assert_close(losses["loss"].detach(), total, atol=4e-5, rtol=1e-5)


def test_keep_classes_copies_the_predictor_rows(pair, tmp_path):
    """Fine-tuning to ("Dog", "unicorn") keeps torchvision's background row and its "dog" rows (label 18) of
    ``cls_score`` and the four of ``bbox_pred``; the unicorn rows start anew. One model is enough: the
    predictor is the same in all four."""
    name, reference, _ = pair
    if name != "fasterrcnn_mobilenet_v3_large_320_fpn":
        pytest.skip("the predictor's layout is the same in every Faster R-CNN")
    path = tmp_path / "reference.pth"
    torch.save(reference.state_dict(), path)
    model = create_model(name, weights=str(path), num_classes=2, keep_classes=["Dog", "unicorn"])
    assert model.kept_classes == ["Dog"]
    cls, box = reference.roi_heads.box_predictor.cls_score, reference.roi_heads.box_predictor.bbox_pred
    ours = model.box_predictor
    assert torch.equal(ours.cls_score.weight[:2].detach(), cls.weight[[0, 18]].detach())
    assert torch.equal(ours.cls_score.bias[:2].detach(), cls.bias[[0, 18]].detach())
    assert torch.equal(
        ours.bbox_pred.weight[:8].detach(), torch.cat([box.weight[:4], box.weight[72:76]]).detach()
    )
    assert torch.equal(ours.bbox_pred.bias[4:8].detach(), box.bias[72:76].detach())
    assert not torch.equal(ours.cls_score.weight[2].detach(), cls.weight[19].detach())
