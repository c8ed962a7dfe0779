"""Faster R-CNN family: OHEM, replace_predictor, crowded images, the ONNX graph with a dynamic batch."""

from __future__ import annotations

import pytest
import torch

from detforge.export import check_onnx, export_onnx
from detforge.models.faster_rcnn import FasterRCNN
from detforge.models.registry import create_model

H, W = 64, 96


def _small(**kwargs) -> FasterRCNN:
    torch.manual_seed(0)
    options = dict(num_classes=3, rpn_post_nms_top_n_train=100, rpn_post_nms_top_n_test=50)
    return create_model("faster_rcnn_n", **{**options, **kwargs})


def _targets():
    return [
        {
            "boxes": torch.tensor([[4.0, 4.0, 30.0, 40.0], [40.0, 10.0, 90.0, 60.0]]),
            "labels": torch.tensor([0, 2]),
        },
        {"boxes": torch.tensor([[10.0, 20.0, 40.0, 60.0]]), "labels": torch.tensor([1])},
    ]


def test_hard_negative_mining_keeps_the_highest_loss_background_rois():
    model = _small(hard_negative_mining=True, box_batch_size_per_image=8).train()
    calls = []
    head = model._head

    def spy(features, boxes, image_idx):
        out = head(features, boxes, image_idx)
        calls.append((boxes.detach(), image_idx, out[0].detach()))
        return out

    model._head = spy
    _, losses = model.forward_loss(torch.rand(2, 3, H, W), _targets())
    assert torch.isfinite(losses["loss"])
    assert len(calls) == 3  # inference path, every negative (OHEM), the sampled RoIs
    neg_boxes, neg_image, neg_logits = calls[1]
    neg_loss = neg_logits.logsumexp(-1) - neg_logits[:, 0]  # cross-entropy against background
    boxes, image_idx, _ = calls[2]
    for i in range(2):
        cand = neg_boxes[neg_image == i]
        sampled = boxes[image_idx == i]
        chosen = (cand[:, None] == sampled[None]).all(-1).any(1)  # [N_neg] sampled negatives
        assert 0 < int(chosen.sum()) <= 8
        ranked = neg_loss[neg_image == i]
        assert ranked[chosen].min() >= ranked[~chosen].max() - 1e-6


def test_replace_predictor_keeps_the_rest():
    model = _small().eval()
    before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("box_predictor")}
    model.replace_predictor(5)
    assert model.num_classes == 5 and model.init_args["num_classes"] == 5
    assert (
        model.box_predictor.cls_score.out_features == 6 and model.box_predictor.bbox_pred.out_features == 24
    )
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    model.score_thresh = 0.0
    with torch.no_grad():
        found = model.postprocess(model(torch.rand(1, 3, H, W)), [(H, W)])
    assert found[0]["labels"].max() < 5
    targets = [{"boxes": torch.tensor([[4.0, 4.0, 30.0, 40.0]]), "labels": torch.tensor([4])}]
    _, losses = model.train().forward_loss(torch.rand(1, 3, H, W), targets)
    assert torch.isfinite(losses["loss"])


def test_crowded_image_500_boxes():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(500, 2, generator=g) * torch.tensor([W - 8, H - 8])
    boxes = torch.cat([xy, xy + 2 + torch.rand(500, 2, generator=g) * 6], 1)
    targets = [{"boxes": boxes, "labels": torch.randint(0, 3, (500,), generator=g)}, _targets()[1]]
    model = _small().train()
    _, losses = model.forward_loss(torch.rand(2, 3, H, W), targets)
    assert set(losses) == {"loss", "loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}
    assert all(torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()


def test_channels_last_covers_every_conv_and_keeps_outputs():
    fast, plain = _small(channels_last=True).eval(), _small(channels_last=False).eval()
    convs = {k: v for k, v in fast.state_dict().items() if v.dim() == 4}
    assert any(k.startswith("rpn_head.") for k in convs)
    for key, weight in convs.items():
        assert weight.is_contiguous(memory_format=torch.channels_last), key
        assert plain.state_dict()[key].is_contiguous(), key
    images = torch.rand(2, 3, H, W)
    with torch.no_grad():
        a, b = fast(images), plain(images)
    for key in ("objectness", "rpn_deltas", "proposals", "class_logits", "box_deltas"):
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-4)
    _, la = fast.train().forward_loss(images, _targets())
    _, lb = plain.train().forward_loss(images, _targets())
    assert torch.isfinite(la["loss"]) and torch.isfinite(lb["loss"])


def test_bad_labels_and_options_raise():
    model = _small().train()
    with pytest.raises(ValueError, match="label 3"):
        model.forward_loss(
            torch.rand(1, 3, H, W), [{"boxes": torch.tensor([[1.0, 1, 9, 9]]), "labels": torch.tensor([3])}]
        )
    with pytest.raises(ValueError, match="nms_method"):
        _small(nms_method="soft")
    with pytest.raises(ValueError, match="anchor_sizes"):
        _small(anchor_sizes=((32,),))


def test_onnx_dynamic_batch_with_roialign_and_nms(tmp_path):
    model = _small().eval()
    model.score_thresh = 0.0  # random weights: keep candidates so NMS has work
    g = torch.Generator().manual_seed(1)
    path = export_onnx(
        model, tmp_path / "frcnn.onnx", example_input=torch.rand(2, 3, H, W, generator=g), with_nms=True,
        dynamic_axes={"images": {0: "batch"}},
    )  # fmt: skip
    import onnx

    def op_types(graph) -> set[str]:  # nodes of the graph and of its If / Loop subgraphs
        found = set()
        for node in graph.node:
            found.add(node.op_type)
            for attr in node.attribute:
                for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                    found |= op_types(sub)
        return found

    ops = op_types(onnx.load(str(path)).graph)
    assert {"RoiAlign", "NonMaxSuppression"} <= ops
    for batch in (1, 3):
        images = torch.rand(batch, 3, H, W, generator=g)
        assert check_onnx(model, path, images) < 1e-4
