"""torchvision's RetinaNet models against detforge's, loaded from the reference's own state dict.

The reference is torchvision's builder (``weights=None, weights_backbone=None``) at a small resize (160 / 256
px in both models, to keep CI fast) with non-trivial weights: random BatchNorm affines whose statistics are
then measured on a batch (so activations stay in range through the 50 layers), random subnets, and the class
layer's background logit bias at -30 so that it never passes the score threshold (detforge's sigmoid head has
no background class: its converter drops that row). ``retinanet_resnet50_fpn`` runs as torchvision runs its
COCO weights: every backbone BatchNorm frozen, eps 0 (torchvision's ``overwrite_eps``); the v2 reference keeps
torchvision's trainable BatchNorm (eps 1e-5), which detforge's v2 freezes by default (the same in eval mode).

The state dict is saved to a file and read back through ``create_model(name, weights=PATH)`` (the
converter, every tensor checked). Detections: ``model.predict(images)`` against ``reference.eval()(images)``
on three image sizes alone and together (one padded batch): the same 300 per image in the same order (two
whose scores differ by less than the 1e-5 tolerance may swap), boxes within 1e-3 px, scores within 1e-5
(measured: 2.4e-4 px, 2.1e-6, 6 near-tied swaps in 1800 detections). Losses: ``forward_loss`` on the batch
our pre-processing builds (torchvision's resize and padding), with the targets torchvision's transform resized
(measured differences: 3.8e-6 of a 39.1 classification loss, v1; v2 at most 9.5e-7).
"""

from __future__ import annotations

import copy
import inspect
import math

import pytest
import torch
import torchvision.models.detection as tvdet
from timm.layers import freeze_batch_norm_2d
from torch import nn
from torchvision.models.detection import RetinaNet as RetinaNetTorchvision
from torchvision.models.detection._utils import overwrite_eps

from detforge.engine.memory_format import set_channels_last
from detforge.models.preprocess import Preprocess, batch_images, resize_image
from detforge.models.registry import _MODELS, create_model
from detforge.models.weights import get_weights

MIN_SIZE, MAX_SIZE = 160, 256
NAMES = ("retinanet_resnet50_fpn", "retinanet_resnet50_fpn_v2")
COUNTS = [3, 0, 2]
IMAGE_SIZES = [(200, 300), (300, 190), (150, 150)]  # -> 160 x 240, 252 x 160, 160 x 160


def _images(sizes, seed=3) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, h, w, generator=g) for h, w in sizes]


def _calibrate_batchnorm(reference: nn.Module, g: torch.Generator) -> None:
    """Random BatchNorm affines, then statistics measured on one batch (train mode, cumulative average); each
    residual branch's last BatchNorm (``bn3``) then scaled by 0.2. A random ResNet-50 at unit branch gain
    amplifies float32 rounding (1-ulp differences between two correct implementations reach 4e-4 in C5, 4e-3
    px in the boxes; in float64 both agree to 1e-12); with the branches damped, as trained ResNets' are, the
    detections agree to 2e-6 in score and 3e-4 px."""
    norms = {name: m for name, m in reference.backbone.body.named_modules() if isinstance(m, nn.BatchNorm2d)}
    for bn in norms.values():
        bn.weight.data.uniform_(0.5, 1.5, generator=g)
        bn.bias.data.normal_(0.0, 0.2, generator=g)
        bn.reset_running_stats()
        bn.momentum = None
    batch, _ = reference.transform(_images(IMAGE_SIZES, seed=11))
    reference.backbone.body.train()
    with torch.no_grad():
        reference.backbone.body(batch.tensors)
    for name, bn in norms.items():
        bn.momentum = 0.1
        if name.endswith("bn3"):
            bn.weight.data.mul_(0.2)
            bn.bias.data.mul_(0.2)


def _randomise_head(reference: nn.Module, g: torch.Generator) -> None:
    """Subnets at unit gain, spread class logits around -4.5 (about a fifth above the 0.05 threshold) and
    box deltas of a few tenths; the background logit (class 0 of every anchor) at -30."""
    head = reference.head
    for subnet in (head.classification_head.conv, head.regression_head.conv):
        for module in subnet.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.data.normal_(0.0, math.sqrt(2.0 / (9 * module.in_channels)), generator=g)
                if module.bias is not None:
                    module.bias.data.normal_(0.0, 0.1, generator=g)
            elif isinstance(module, nn.GroupNorm):
                module.weight.data.uniform_(0.5, 1.5, generator=g)
                module.bias.data.normal_(0.0, 0.1, generator=g)
    cls_logits, bbox_reg = head.classification_head.cls_logits, head.regression_head.bbox_reg
    cls_logits.weight.data.normal_(0.0, 0.02, generator=g)
    cls_logits.bias.data.normal_(-4.5, 0.5, generator=g)
    cls_logits.bias.data.view(head.classification_head.num_anchors, -1)[:, 0] = -30.0
    bbox_reg.weight.data.normal_(0.0, 0.005, generator=g)
    bbox_reg.bias.data.normal_(0.0, 0.1, generator=g)


def _reference(name: str) -> nn.Module:
    torch.manual_seed(0)
    reference = getattr(tvdet, name)(
        weights=None, weights_backbone=None, min_size=MIN_SIZE, max_size=MAX_SIZE
    )
    g = torch.Generator().manual_seed(1)
    _calibrate_batchnorm(reference, g)
    if name == "retinanet_resnet50_fpn":  # the COCO weights' configuration: frozen BatchNorm, eps 0
        reference.backbone.body = freeze_batch_norm_2d(reference.backbone.body)
        overwrite_eps(reference, 0.0)
    _randomise_head(reference, g)
    return reference.eval()


def _ours(name: str, path, **kwargs) -> nn.Module:
    model = create_model(name, weights=path, **kwargs)
    model.preprocess = Preprocess(
        resize="shortest_edge", min_size=MIN_SIZE, max_size=MAX_SIZE, size_divisible=32
    )
    return model.eval()


@pytest.fixture(scope="module", params=NAMES)
def pair(request, tmp_path_factory):
    """(name, torchvision reference, detforge model loaded from the reference's state dict, the file)."""
    reference = _reference(request.param)
    path = tmp_path_factory.mktemp(request.param) / "reference.pth"
    torch.save(reference.state_dict(), path)
    return request.param, reference, _ours(request.param, path), path


def _assert_same_detections(det: dict, ref: dict, where: str) -> int:
    """``det`` (detforge labels) equal to ``ref`` (torchvision's): the same count, and detection ``i`` equal
    to the reference's ``i`` (label, box within 1e-3 px, score within 1e-5), except that two detections whose
    scores differ by less than the score tolerance may come in either order. Returns how many such
    near-tied detections came in the other order."""
    n = ref["boxes"].shape[0]
    assert det["boxes"].shape[0] == n, f"{where}: {det['boxes'].shape[0]} detections, torchvision {n}"
    close = (
        (det["labels"][:, None] + 1 == ref["labels"][None, :])
        & ((det["boxes"][:, None, :] - ref["boxes"][None, :, :]).abs().amax(-1) <= 1e-3)
        & ((det["scores"][:, None] - ref["scores"][None, :]).abs() <= 1e-5)
    )  # [n, n]: detection i matches reference j
    taken = torch.zeros(n, dtype=torch.bool)
    swapped = 0
    for i in range(n):
        free = (close[i] & ~taken).nonzero().flatten()
        assert free.numel(), (
            f"{where}: detection {i} ({det['labels'][i] + 1}, {det['scores'][i]:.6f}) has no match"
        )
        j = i if bool(close[i, i] and not taken[i]) else int(free[0])
        taken[j] = True
        swapped += j != i
    return swapped


@pytest.mark.parametrize("case", ["size 0", "size 1", "size 2", "mixed batch"])
def test_detections_equal_torchvision(pair, case):
    name, reference, model, _ = pair
    sizes = IMAGE_SIZES if case == "mixed batch" else [IMAGE_SIZES[int(case[-1])]]
    images = _images(sizes)
    with torch.no_grad():
        expected = reference(images)
    found = model.predict(images)
    for i, (det, ref) in enumerate(zip(found, expected, strict=True)):
        where = f"{name}, {case}, image {i}"
        assert ref["boxes"].shape[0] == 300, f"{where}: {ref['boxes'].shape[0]} reference detections"
        assert _assert_same_detections(det, ref, where) <= 4, f"{where}: many near-tied detections reordered"


def _targets(sizes, seed=5) -> list[dict]:
    """torchvision targets (labels 1..90) of 3, 0 and 2 boxes."""
    g = torch.Generator().manual_seed(seed)
    targets = []
    for i, (h, w) in enumerate(sizes):
        n = COUNTS[i % 3]
        xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
        wh = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.4, h * 0.4]) + 12
        boxes = torch.cat([xy, (xy + wh).minimum(torch.tensor([w, h]))], 1)
        targets.append({"boxes": boxes, "labels": torch.randint(1, 91, (n,), generator=g)})
    return targets


@pytest.mark.parametrize("batchnorm", ["frozen", "trained"])
def test_training_losses_equal_torchvision(pair, batchnorm):
    """Training-mode losses on the batch our pre-processing builds (torchvision's resize, mean-colour padding)
    with the targets torchvision's transform resized. "frozen": the builders' defaults (v2: BatchNorm frozen,
    against torchvision's v2 with its BatchNorm layers in eval mode); "trained": v2 with
    ``frozen_batchnorm=False`` against torchvision's v2 as it trains (batch statistics). NCHW convolutions, as
    torchvision's: channels-last ones round differently, which training-mode BatchNorm turns into 1.4e-4 of
    the v2's 15.5 classification loss (0 in NCHW)."""
    name, reference, model, path = pair
    reference = copy.deepcopy(reference).train()
    if batchnorm == "trained":
        if name != "retinanet_resnet50_fpn_v2":
            pytest.skip("torchvision runs retinanet_resnet50_fpn's COCO weights with frozen BatchNorm only")
        model = _ours(name, path, frozen_batchnorm=False)
    else:
        model = copy.deepcopy(model)
        for module in reference.modules():  # v2: torchvision's BatchNorm frozen as ours (v1: frozen already)
            if isinstance(module, nn.BatchNorm2d):
                module.eval()
    model.train()
    set_channels_last(model, False)
    images, targets = _images(IMAGE_SIZES), _targets(IMAGE_SIZES)
    expected = {key: float(value.detach()) for key, value in reference(images, targets).items()}
    _, resized = reference.transform(images, targets)
    batch = batch_images([resize_image(im, model.preprocess) for im in images], model.preprocess)
    ours = [{"boxes": t["boxes"], "labels": t["labels"] - 1} for t in resized]
    _, losses = model.forward_loss(batch, ours)
    for key in ("classification", "bbox_regression"):
        assert expected[key] > 0, key
        diff = abs(float(losses[key]) - expected[key])
        assert diff <= 1e-5, f"{name} {key}: {float(losses[key])} vs torchvision {expected[key]}"
    assert abs(float(losses["loss"].detach()) - sum(expected.values())) <= 2e-5


def test_builders_default_to_torchvision_settings(pair):
    name, reference, model, _ = pair
    settings = model.postprocess_settings
    assert settings.score_thresh == reference.score_thresh == 0.05
    assert settings.nms_thresh == reference.nms_thresh == 0.5
    assert settings.max_detections_per_image == reference.detections_per_img == 300
    assert settings.pre_nms_topk == reference.topk_candidates == 1000
    matcher = reference.proposal_matcher
    assert model.criterion.iou_thresholds == (matcher.high_threshold, matcher.low_threshold) == (0.5, 0.4)
    assert model.criterion.box_loss == reference.head.regression_head._loss_type  # "l1" / "giou"
    torchvision_sizes = inspect.signature(RetinaNetTorchvision.__init__).parameters
    builder_sizes = inspect.signature(_MODELS[name]).parameters
    weights = get_weights(name, "coco").preprocess
    for key in ("min_size", "max_size"):  # 800, 1333
        assert builder_sizes[key].default == getattr(weights, key) == torchvision_sizes[key].default
    assert model.num_classes == 90 and model.strides == (8, 16, 32, 64, 128)
    frozen = [
        p.requires_grad for n, p in model.backbone.named_parameters() if n.startswith(("conv1", "layer1"))
    ]
    assert frozen and not any(frozen)  # torchvision's trainable_backbone_layers=3


def test_keep_classes_copies_each_anchors_coco_row(pair):
    """Fine-tuning to ("Dog", "unicorn") keeps torchvision's "dog" row (label 18) of every anchor's class
    block; the unicorn rows start anew. The layout is the family's: one model is enough."""
    name, reference, _, path = pair
    if name != NAMES[0]:
        pytest.skip("the class layer's layout is the same in both models")
    model = create_model(name, weights=path, num_classes=2, keep_classes=["Dog", "unicorn"])
    assert model.kept_classes == ["Dog"]
    head = reference.head.classification_head.cls_logits
    expected = head.weight.detach().reshape(9, 91, -1)[:, 18]  # [A, 256 * 3 * 3]
    got = model.head.cls_logits.weight.detach().reshape(9, 2, -1)  # [A, 2, 256 * 3 * 3]
    assert torch.equal(got[:, 0], expected)
    assert torch.equal(
        model.head.cls_logits.bias.detach().reshape(9, 2)[:, 0], head.bias.detach().reshape(9, 91)[:, 18]
    )
    assert not torch.equal(got[:, 1], head.weight.detach().reshape(9, 91, -1)[:, 19])
