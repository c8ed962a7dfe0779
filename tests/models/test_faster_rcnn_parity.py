"""Faster R-CNN against torchvision's, with the same resnet18-FPN weights copied into both.

torchvision's transform is neutralised (no resize, mean 0 / std 1) and ours does not normalise, so both see
the same padded batch; the different-size batch is padded to a multiple of 64 so torchvision's "pool" level
has stride 64 too (it derives anchor strides by integer division of the padded size). Training parity takes
every sampled candidate (sampler sizes larger than the candidates), so neither sampler draws at random.
"""

from __future__ import annotations

import pytest
import torch
from torchvision.models import resnet18
from torchvision.models.detection import FasterRCNN as TorchvisionFasterRCNN
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

from detforge.models.faster_rcnn import FasterRCNN, build_faster_rcnn

NUM_CLASSES, FPN, REPR = 3, 32, 64
TAKE_ALL = 100_000


def _torchvision(**kwargs) -> TorchvisionFasterRCNN:
    torch.manual_seed(0)
    body = resnet18(weights=None, norm_layer=FrozenBatchNorm2d)
    for bn in body.modules():  # non-trivial frozen statistics, copied into ours
        if isinstance(bn, FrozenBatchNorm2d):
            bn.weight.uniform_(0.5, 1.5), bn.bias.normal_(0, 0.1)
            bn.running_mean.normal_(0, 0.1), bn.running_var.uniform_(0.5, 1.5)
    layers = {f"layer{i}": str(i - 1) for i in range(1, 5)}
    backbone = BackboneWithFPN(body, layers, [64, 128, 256, 512], FPN, extra_blocks=LastLevelMaxPool())
    rpn_head = RPNHead(FPN, 3)
    torch.nn.init.normal_(rpn_head.cls_logits.weight, std=0.3)  # spread objectness: no tied scores
    torch.nn.init.normal_(rpn_head.bbox_pred.weight, std=0.05)
    model = TorchvisionFasterRCNN(
        backbone, rpn_head=rpn_head, box_head=TwoMLPHead(FPN * 49, REPR),
        box_predictor=FastRCNNPredictor(REPR, NUM_CLASSES + 1), min_size=64, max_size=128,
        image_mean=[0.0, 0.0, 0.0], image_std=[1.0, 1.0, 1.0], **kwargs,
    )  # fmt: skip
    torch.nn.init.normal_(model.roi_heads.box_predictor.bbox_pred.weight, std=0.05)
    model.transform.resize = lambda image, target: (image, target)  # images stay as they are
    return model


def _ours(reference: TorchvisionFasterRCNN, **kwargs) -> FasterRCNN:
    model = build_faster_rcnn(
        "resnet18", NUM_CLASSES, out_indices=(1, 2, 3, 4), fpn_channels=FPN, representation_size=REPR,
        normalize=False, pre_nms_topk=TAKE_ALL, **kwargs,
    )  # fmt: skip
    rename = {
        "backbone.body.": "features.body.",
        "backbone.fpn.": "features.fpn.fpn.",
        "rpn.head.conv.0.0.": "rpn_head.conv.0.",
        "rpn.head.": "rpn_head.",
        "roi_heads.box_head.": "box_head.",
        "roi_heads.box_predictor.": "box_predictor.",
    }
    state = {}
    for key, value in reference.state_dict().items():
        old = next(p for p in rename if key.startswith(p))
        state[rename[old] + key[len(old) :]] = value
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing), (missing, unexpected)
    return model


SIZES = {"batch 1": [(64, 128)], "different sizes": [(64, 128), (64, 96), (48, 112), (32, 64)]}


def _images(sizes) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return [torch.rand(3, h, w, generator=g) for h, w in sizes]


def _by_score(boxes, scores, labels=None):
    order = scores.argsort(descending=True, stable=True)
    return boxes[order], scores[order], None if labels is None else labels[order]


@pytest.mark.parametrize("case", list(SIZES))
def test_inference_equals_torchvision(case):
    reference = _torchvision().eval()
    ours = _ours(reference).eval()
    images = _images(SIZES[case])
    with torch.no_grad():
        batch, _ = reference.transform(images)
        features = reference.backbone(batch.tensors)
        proposals, _ = reference.rpn(batch, features)
        expected, _ = reference.roi_heads(features, proposals, batch.image_sizes)
        outputs = ours(batch.tensors, image_sizes=batch.image_sizes)
        found = ours.postprocess(outputs, batch.image_sizes)
    assert batch.tensors.shape[-2:] == (64, 128)
    for i, (tv_props, tv_det, det) in enumerate(zip(proposals, expected, found)):
        props = outputs["proposals"][i][outputs["proposal_mask"][i]]
        assert props.shape == tv_props.shape, (
            f"image {i}: {props.shape[0]} proposals, torchvision {tv_props.shape[0]}"
        )
        torch.testing.assert_close(props, tv_props, atol=1e-4, rtol=0)
        assert det["boxes"].shape[0] == tv_det["boxes"].shape[0] > 0
        boxes, scores, labels = _by_score(det["boxes"], det["scores"], det["labels"])
        tv_boxes, tv_scores, tv_labels = _by_score(tv_det["boxes"], tv_det["scores"], tv_det["labels"])
        torch.testing.assert_close(scores, tv_scores, atol=1e-4, rtol=0)
        torch.testing.assert_close(boxes, tv_boxes, atol=1e-4, rtol=0)
        assert torch.equal(labels + 1, tv_labels)  # detforge 0..C-1 = torchvision 1..C


def _targets(sizes):
    g = torch.Generator().manual_seed(5)
    targets = []
    for i, (h, w) in enumerate(sizes):
        n = [3, 1, 0, 2][i % 4]
        xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
        wh = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.4, h * 0.4]) + 6
        boxes = torch.cat([xy, (xy + wh).minimum(torch.tensor([w, h]))], 1)
        labels = torch.randint(0, NUM_CLASSES, (n,), generator=g)
        targets.append({"boxes": boxes, "labels": labels, "size": torch.tensor([h, w])})
    return targets


@pytest.mark.parametrize("case", list(SIZES))
def test_training_losses_equal_torchvision(case):
    take_all = dict(rpn_batch_size_per_image=TAKE_ALL, box_batch_size_per_image=TAKE_ALL)
    reference = _torchvision(**take_all).train()
    ours = _ours(reference, **take_all).train()
    for module in ours.modules():  # torchvision's ResNet-FPN has frozen BatchNorm
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eval()
    images, targets = _images(SIZES[case]), _targets(SIZES[case])
    tv_targets = [{"boxes": t["boxes"], "labels": t["labels"] + 1} for t in targets]
    expected = reference(images, tv_targets)
    batch, _ = reference.transform(images)
    _, losses = ours.forward_loss(batch.tensors, targets)
    for key in ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"):
        assert expected[key] > 0, key
        torch.testing.assert_close(losses[key], expected[key].detach(), atol=1e-5, rtol=1e-5, msg=key)
    total = sum(expected.values())
    torch.testing.assert_close(losses["loss"].detach(), total.detach(), atol=4e-5, rtol=1e-5)
