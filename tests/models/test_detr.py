"""DETR: batch-size (padding) invariance, the layers against torch's, positional encoding, optimiser groups."""

import math

import pytest
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from detforge.data.datamodule import detection_collate
from detforge.models.detr import DETR, DETREncoderLayer, SinePositionEncoding, padding_mask
from detforge.models.registry import create_model


@pytest.fixture(scope="module")
def model() -> DETR:
    torch.manual_seed(0)
    return create_model("detr_n", num_classes=3).eval()


def _target(h: int, w: int) -> dict:
    return {
        "boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0]]),
        "labels": torch.tensor([1]),
        "size": torch.tensor([h, w]),
        "orig_size": torch.tensor([h, w]),
    }


def test_evaluation_does_not_change_with_batch_size(model):
    """A 64 x 96 image alone and padded into a batch with a 96 x 128 one: same outputs, same detections."""
    g = torch.Generator().manual_seed(2)
    small, large = torch.rand(3, 64, 96, generator=g), torch.rand(3, 96, 128, generator=g)
    model.score_thresh = 0.0
    try:
        with torch.no_grad():
            alone_images, alone_targets = detection_collate([(small, _target(64, 96))])
            alone = model(alone_images, [(64, 96)])
            alone_det = model.postprocess(alone, [(64, 96)])[0]
            images, targets = detection_collate([(large, _target(96, 128)), (small, _target(64, 96))])
            assert images.shape == (2, 3, 96, 128)
            batched, _ = model.forward_loss(images, targets)  # sizes from the targets
            batched_det = model.postprocess(batched, [(96, 128), (64, 96)])[1]
    finally:
        model.score_thresh = 0.05
    for key in ("class_logits", "boxes"):
        torch.testing.assert_close(batched[key][:, 1], alone[key][:, 0], atol=1e-4, rtol=0)
    torch.testing.assert_close(batched["image_sizes"][1], alone["image_sizes"][0])
    # the same detections; two whose scores tie within float noise may come out in either order
    assert len(batched_det["scores"]) == len(alone_det["scores"])
    cost = (batched_det["boxes"][:, None] - alone_det["boxes"][None]).abs().amax(-1)  # [N, N]
    cost = cost + (batched_det["scores"][:, None] - alone_det["scores"][None]).abs()
    cost[batched_det["labels"][:, None] != alone_det["labels"][None]] = float("inf")
    rows, cols = linear_sum_assignment(cost.numpy())
    assert len(rows) == len(cost) and float(cost[rows, cols].max()) <= 2e-4


def test_padding_is_masked_in_the_encoder(model):
    """The padded cells change nothing: fill the padding with other values, same outputs."""
    images = torch.rand(2, 3, 96, 128)
    other = images.clone()
    other[1, :, 64:] = torch.rand_like(other[1, :, 64:])
    sizes = [(96, 128), (64, 96)]
    with torch.no_grad():
        a, b = model(images, sizes), model(other, sizes)
    torch.testing.assert_close(a["boxes"][:, 1], b["boxes"][:, 1], atol=1e-5, rtol=0)


def test_sine_encoding_of_a_padded_image_equals_the_image_alone():
    enc = SinePositionEncoding(16)
    alone = enc(None, 1, 3, 4)  # [1, 16, 3, 4]
    mask = padding_mask(torch.tensor([[3, 4], [5, 6]]), 5, 6)  # [2, 5, 6]
    assert mask[0, :3, :4].logical_not().all() and mask[0, 3:].all() and mask[0, :, 4:].all()
    padded = enc(mask, 2, 5, 6)
    torch.testing.assert_close(padded[0, :, :3, :4], alone[0])
    # DETR's definition: y / h_real * 2 pi (at cell centres), sin on even channels, cos on odd ones
    y = (torch.arange(3.0) + 0.5) / 3 * 2 * math.pi
    torch.testing.assert_close(alone[0, 0, :, 0], y.sin(), atol=1e-5, rtol=0)
    torch.testing.assert_close(alone[0, 1, :, 0], y.cos(), atol=1e-5, rtol=0)


def test_encoder_layer_without_positions_is_torchs_layer():
    torch.manual_seed(0)
    ours = DETREncoderLayer(32, 4, 64, dropout=0.0).eval()
    ref = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True).eval()
    ref.self_attn.load_state_dict(ours.self_attn.state_dict())
    ref.linear1.load_state_dict(ours.ffn[0].state_dict())
    ref.linear2.load_state_dict(ours.ffn[3].state_dict())
    ref.norm1.load_state_dict(ours.norm1.state_dict())
    ref.norm2.load_state_dict(ours.norm2.state_dict())
    src = torch.randn(2, 7, 32)
    mask = torch.zeros(2, 7, dtype=torch.bool)
    mask[1, 5:] = True
    with torch.no_grad():
        got = ours(src, torch.zeros_like(src), mask)
        want = ref(src, src_key_padding_mask=mask)
    torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(got[1, :5], want[1, :5], atol=1e-5, rtol=0)


def test_postprocess_is_top_k_without_nms(model):
    assert model.nms_method == "none" and model.pre_nms_topk == 100
    with torch.no_grad():
        out = model(torch.rand(1, 3, 64, 96))
    model.score_thresh = 0.0
    try:
        det = model.postprocess(out, [(64, 96)])[0]
    finally:
        model.score_thresh = 0.05
    scores = out["class_logits"][-1, 0].softmax(-1)[:, :-1].flatten()  # [Q * C]
    torch.testing.assert_close(det["scores"], scores.topk(100).values)


def test_backbone_learning_rate_is_a_tenth(model):
    from detforge.engine.optim import create_optimizer

    optimizer = create_optimizer(model, "adamw", 1e-4, 1e-4)
    backbone = {id(p) for p in model.backbone.parameters()}
    for group in optimizer.param_groups:
        in_backbone = {id(p) in backbone for p in group["params"]}
        assert len(in_backbone) == 1
        want = 1e-5 if in_backbone.pop() else 1e-4
        assert group["lr"] == pytest.approx(want)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))


def test_options_are_validated():
    with pytest.raises(ValueError, match="backbone_level"):
        create_model("detr_n", backbone_level=1)
    with pytest.raises(ValueError, match="num_queries"):
        create_model("detr_n", num_queries=0)


def test_forward_with_sizes_passes_the_real_sizes_to_models_that_take_them(model):
    from detforge.models.base import forward_with_sizes

    images, sizes = torch.rand(2, 3, 96, 128), [(96, 128), (64, 96)]
    with torch.no_grad():
        got = forward_with_sizes(model, images, sizes)
        torch.testing.assert_close(got["boxes"], model(images, sizes)["boxes"])
        plain = nn.Conv2d(3, 1, 1)
        torch.testing.assert_close(forward_with_sizes(plain, images, sizes), plain(images))
