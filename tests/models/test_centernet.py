"""CenterNet: peak decoding, a perfect prediction giving back its targets, the losses at object centres,
the neck's strides and the registered options (the protocol itself: tests/models/test_conformance.py)."""

from __future__ import annotations

import pytest
import torch

from detforge.models.centernet import CenterNet
from detforge.models.necks.upsample import DeformConv3x3, UpsampleNeck
from detforge.models.registry import create_model
from detforge.targets import pad_targets

H, W = 64, 96


@pytest.fixture(scope="module")
def model() -> CenterNet:
    torch.manual_seed(0)
    return create_model("centernet_mobilenetv3_small_050", num_classes=3).eval()


def _targets():
    return [
        {
            "boxes": torch.tensor([[4.0, 4.0, 20.0, 28.0], [30.0, 10.0, 70.0, 50.0]]),
            "labels": torch.tensor([0, 2]),
        },
        {"boxes": torch.tensor([[60.0, 30.0, 90.0, 61.0]]), "labels": torch.tensor([1])},
    ]


def test_defaults(model):
    assert model.strides == (4,)
    assert model.nms_method == "none" and model.pre_nms_topk == 100 and model.max_detections_per_image == 100
    out = model(torch.rand(2, 3, H, W))
    assert out["heatmap"].shape == (2, 3, H // 4, W // 4)
    assert out["size"].shape == out["offset"].shape == (2, 2, H // 4, W // 4)
    assert out["feat_sizes"] == [(H // 4, W // 4)]
    assert torch.allclose(model.head.heatmap[-1].bias, torch.full((3,), -2.19))


def test_decode_keeps_peaks_only(model):
    h, w = H // 4, W // 4
    heatmap = torch.full((1, 3, h, w), -10.0)
    heatmap[0, 1, 3, 5] = 2.0  # a peak
    heatmap[0, 1, 3, 6] = 1.0  # its neighbour: not a peak
    heatmap[0, 0, 3, 6] = 0.5  # another class at the neighbour cell: a peak of its own class
    offset = torch.zeros(1, 2, h, w)
    size = torch.zeros(1, 2, h, w)
    offset[0, :, 3, 5] = torch.tensor([0.25, 0.5])
    size[0, :, 3, 5] = torch.tensor([4.0, 2.0])
    size[0, :, 3, 6] = torch.tensor([-1.0, 3.0])  # negative sizes decode as 0
    outputs = {"heatmap": heatmap, "size": size, "offset": offset, "feat_sizes": [(h, w)]}
    scores, boxes = model.decode(outputs)
    assert scores.shape == (1, h * w, 3) and boxes.shape == (1, h * w, 4)
    assert float(scores[0, 3 * w + 6, 1]) == 0.0
    assert float(scores[0, 3 * w + 6, 0]) == pytest.approx(torch.sigmoid(torch.tensor(0.5)).item())
    det = model.postprocess(outputs, [(H, W)])[0]
    assert det["labels"].tolist() == [1, 0]
    assert det["scores"].tolist() == pytest.approx(
        [torch.sigmoid(torch.tensor(v)).item() for v in (2.0, 0.5)]
    )
    # centre ((5 + 0.25) * 4, (3 + 0.5) * 4) = (21, 14), size (16, 8)
    assert det["boxes"][0].tolist() == pytest.approx([13.0, 10.0, 29.0, 18.0])
    assert det["boxes"][1].tolist() == pytest.approx([24.0, 6.0, 24.0, 18.0])


def _perfect_outputs(model, targets):
    h, w = H // 4, W // 4
    gt_boxes, gt_labels, gt_mask = pad_targets(targets)
    t = model.criterion.target_builder((h, w), gt_boxes, gt_labels, gt_mask, model.num_classes)
    heat = t.heatmap.clamp(1e-6, 1 - 1e-6)
    maps = torch.zeros(len(targets), 4, h * w)  # (dx, dy, w, h) at the centres
    for b in range(len(targets)):
        maps[b][:, t.index[b][t.mask[b]]] = t.offset_size[b][t.mask[b]].T
    maps = maps.reshape(len(targets), 4, h, w)
    logits = torch.log(heat / (1 - heat))
    return {"heatmap": logits, "offset": maps[:, :2], "size": maps[:, 2:], "feat_sizes": [(h, w)]}


def test_perfect_prediction_gives_back_the_targets(model):
    targets = _targets()
    outputs = _perfect_outputs(model, targets)
    losses = model.loss(outputs, targets)
    assert float(losses["size_loss"]) == 0.0 and float(losses["offset_loss"]) == 0.0
    assert float(losses["heatmap_loss"]) < 1e-3 and float(losses["num_pos"]) == 3
    settings = model.postprocess_settings
    model.score_thresh = 0.5
    try:
        dets = model.postprocess(outputs, [(H, W)] * 2)
    finally:
        model.postprocess_settings = settings
    for det, t in zip(dets, targets):
        order = det["labels"].argsort()
        assert det["labels"][order].tolist() == sorted(t["labels"].tolist())
        expected = t["boxes"][t["labels"].argsort()]
        torch.testing.assert_close(det["boxes"][order], expected, atol=1e-4, rtol=0)


def test_size_and_offset_losses_at_the_centres_only(model):
    targets = _targets()
    outputs = _perfect_outputs(model, targets)
    outputs["size"] = outputs["size"] + 1.0  # 1 cell too large everywhere: |error| 1 at each centre
    outputs["offset"] = outputs["offset"] + 0.5
    losses = model.loss(outputs, targets)
    assert float(losses["size_loss"]) == pytest.approx(1.0)  # mean over the objects' 2 coordinates
    assert float(losses["offset_loss"]) == pytest.approx(0.5)
    expected = losses["heatmap_loss"] + 0.1 * 1.0 + 1.0 * 0.5
    assert float(losses["loss"]) == pytest.approx(float(expected), rel=1e-6)


def test_hard_nms_stays_available(model):
    settings = model.postprocess_settings
    images = torch.rand(2, 3, H, W)
    try:
        with torch.no_grad():
            outputs = model(images)
            model.score_thresh = 0.0
            none = model.postprocess(outputs, [(H, W)] * 2)
            model.nms_method = "hard"
            model.nms_thresh = 0.01
            hard = model.postprocess(outputs, [(H, W)] * 2)
    finally:
        model.postprocess_settings = settings
    assert all(len(d["scores"]) == 100 for d in none)
    assert all(len(h["scores"]) <= len(n["scores"]) for h, n in zip(hard, none))


def test_neck_from_a_stride_8_backbone_and_options():
    model = create_model(
        "centernet_mobilenetv3_small_050",
        num_classes=2,
        out_indices=(2, 3, 4),
        legacy_radius=True,
        min_overlap=0.5,
        size_loss_weight=0.2,
    )
    assert model.backbone.feature_info.reduction() == [8, 16, 32]
    assert len(model.neck.up) == 1
    out = model(torch.rand(1, 3, H, W))
    assert out["heatmap"].shape == (1, 2, H // 4, W // 4)
    builder = model.criterion.target_builder
    assert builder.legacy_radius and builder.min_overlap == 0.5 and model.criterion.size_weight == 0.2


def test_neck_validates_and_skips_finer_levels():
    neck = UpsampleNeck([8, 16, 24, 32], [2, 4, 8, 16], out_channels=8, out_stride=4)
    feats = [torch.rand(1, c, 32 // s, 48 // s) for c, s in zip([8, 16, 24, 32], [2, 4, 8, 16])]
    assert neck(feats).shape == (1, 8, 8, 12)
    with pytest.raises(ValueError, match="out_stride"):
        UpsampleNeck([8], [32], out_stride=64)
    with pytest.raises(ValueError, match="2\\^k"):
        UpsampleNeck([8], [12], out_stride=8)


def test_deformable_conv_starts_as_a_plain_conv():
    torch.manual_seed(0)
    dcn = DeformConv3x3(6, 5)
    plain = torch.nn.Conv2d(6, 5, 3, padding=1, bias=False)
    plain.weight.data.copy_(dcn.conv.weight.data)
    x = torch.rand(2, 6, 9, 13)
    torch.testing.assert_close(dcn(x), plain(x), atol=1e-5, rtol=1e-5)


def test_deformable_neck_trains(model):
    torch.manual_seed(0)
    dcn = create_model("centernet_mobilenetv3_small_050", num_classes=3, deformable=True).train()
    assert any(isinstance(m, DeformConv3x3) for m in dcn.neck.modules())
    outputs, losses = dcn.forward_loss(torch.rand(2, 3, H, W), _targets())
    losses["loss"].backward()
    offsets = [m.offset.weight.grad for m in dcn.neck.modules() if isinstance(m, DeformConv3x3)]
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in offsets)
    assert outputs["heatmap"].shape == (2, 3, H // 4, W // 4)
