"""RT-DETR-like detector: denoising stays out of the outputs, padding does not leak into the transformer
parts, options are validated."""

from __future__ import annotations

import pytest
import torch

from detforge.models.detr.position import padding_mask
from detforge.models.detr.rtdetr import RTDETR
from detforge.models.registry import create_model

H, W = 64, 96


def _model(**kwargs) -> RTDETR:
    torch.manual_seed(0)
    options = dict(hidden_dim=32, num_heads=4, ffn_dim=64, num_queries=20, num_decoder_layers=2)
    options.update(kwargs)
    return create_model("rtdetr_mobilenetv3_small_050", num_classes=3, input_size=(H, W), **options)


def _targets():
    size = torch.tensor([H, W])
    return [
        {"boxes": torch.tensor([[4.0, 4.0, 20.0, 28.0], [30.0, 10.0, 70.0, 50.0]]), "labels": torch.tensor([0, 2]),
         "size": size},
        {"boxes": torch.tensor([[10.0, 20.0, 40.0, 60.0]]), "labels": torch.tensor([1]), "size": size},
    ]  # fmt: skip


def test_denoising_only_in_the_training_loss():
    model = _model().train()
    images = torch.rand(2, 3, H, W, generator=torch.Generator().manual_seed(0))
    outputs, losses = model.forward_loss(images, _targets())
    assert losses["dn_loss"] > 0
    with torch.no_grad():
        plain = model(images)  # train mode too, so BatchNorm uses the same batch statistics
    assert set(outputs) == set(plain)
    for key, value in plain.items():
        assert outputs[key].shape == value.shape
        torch.testing.assert_close(outputs[key], value, atol=1e-5, rtol=1e-5)  # matching never sees denoising
    losses["loss"].backward()
    assert model.decoder.denoising_embed.weight.grad.abs().sum() > 0
    model.eval()
    _, eval_losses = model.forward_loss(images, _targets())
    assert float(eval_losses["dn_loss"]) == 0.0 and set(eval_losses) == set(losses)


def test_decoder_ignores_padded_memory():
    """Given the unpadded image's encoder maps, a padded batch (random values in the padding) decodes the
    same queries and boxes: query selection, deformable sampling (valid ratios) and masks see no padding."""
    model = _model().eval()
    dec = model.decoder
    shapes, padded_shapes = [(8, 12), (4, 6), (2, 3)], [(12, 16), (6, 8), (3, 4)]
    g = torch.Generator().manual_seed(1)
    maps = [torch.randn(1, 32, h, w, generator=g) for h, w in shapes]
    padded = [torch.randn(2, 32, h, w, generator=g) for h, w in padded_shapes]
    for m, p in zip(maps, padded):
        p[:1, :, : m.shape[-2], : m.shape[-1]] = m
    sizes = torch.tensor([[64.0, 96.0]])
    alone_memory = torch.cat([m.flatten(2).transpose(1, 2) for m in maps], 1)
    with torch.no_grad():
        alone = dec(alone_memory, shapes, model.strides, sizes, torch.ones(1, 3, 2))
        batch_sizes = torch.tensor([[64.0, 96.0], [96.0, 128.0]])
        valid = torch.tensor([[[96 / 128, 64 / 96]] * 3, [[1.0, 1.0]] * 3])  # [B, L, (x, y)]
        real = torch.tensor([shapes, padded_shapes])  # [B, L, 2] cells of each image's own maps
        mask = [padding_mask(real[:, i], h, w).flatten(1) for i, (h, w) in enumerate(padded_shapes)]
        mask = torch.cat(mask, 1)
        memory = torch.cat([p.flatten(2).transpose(1, 2) for p in padded], 1)
        batch = dec(memory, padded_shapes, model.strides, batch_sizes, valid, mask)
    for key in ("logits", "boxes"):
        torch.testing.assert_close(batch[key][:, :1], alone[key], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("small", [(64, 96), (50, 70)])  # divisible by the strides or not
def test_padded_image_gives_the_same_detections_as_alone(small):
    """Evaluation does not depend on the batch: an image padded next to a larger one decodes as alone."""
    model = _model().eval()
    model.score_thresh = 0.0
    g = torch.Generator().manual_seed(3)
    (h, w), big = small, torch.rand(3, 96, 128, generator=g)
    image = torch.rand(3, h, w, generator=g)
    batch = torch.full((2, 3, 96, 128), 114 / 255)
    batch[0, :, :h, :w], batch[1] = image, big
    with torch.no_grad():
        alone = model(image[None])
        padded = model(batch, [(h, w), (96, 128)])
        det_alone = model.postprocess(alone, [(h, w)])[0]
        det_padded = model.postprocess(padded, [(h, w), (96, 128)])[0]
        big_alone = model(big[None])
    for key in ("logits", "boxes_rel"):
        torch.testing.assert_close(padded[key][:, :1], alone[key], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(padded["logits"][:, 1:], big_alone["logits"], atol=1e-4, rtol=1e-4)
    for key in ("boxes", "scores", "labels"):
        torch.testing.assert_close(det_padded[key], det_alone[key], atol=1e-4, rtol=1e-4)


def test_focal_class_loss_and_validation():
    model = _model(class_loss="focal").train()
    _, losses = model.forward_loss(torch.rand(2, 3, H, W), _targets())
    assert torch.isfinite(losses["loss"])
    with pytest.raises(ValueError, match="class_loss"):
        _model(class_loss="softmax")
    with pytest.raises(ValueError, match="num_denoising"):
        _model(num_denoising=-1)
    with pytest.raises(TypeError, match="extra_levels"):
        _model(extra_levels=1)


def test_fewer_tokens_than_queries():
    model = _model(num_queries=500).eval()
    with torch.no_grad():
        outputs = model(torch.rand(1, 3, 32, 64))
    assert outputs["logits"].shape[2] == 4 * 8 + 2 * 4 + 1 * 2  # every token of strides 8, 16, 32


@pytest.mark.parametrize("with_nms", [False, True], ids=["raw", "nms"])
def test_onnx_dynamic_batch(with_nms, tmp_path):
    pytest.importorskip("onnxruntime")
    from detforge.export import check_onnx, export_onnx

    model = _model().eval()
    example = torch.rand(1, 3, H, W, generator=torch.Generator().manual_seed(4))
    path = export_onnx(
        model, tmp_path / "m.onnx", example_input=example, dynamic_axes="auto", with_nms=with_nms
    )
    batch = torch.rand(3, 3, H, W, generator=torch.Generator().manual_seed(5))
    assert check_onnx(model, path, batch) < 1e-4
    onnx = pytest.importorskip("onnx")
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert "NonMaxSuppression" not in ops and "GridSample" in ops  # set prediction: no NMS in the graph
