"""Multi-scale deformable attention against a plain per-point bilinear-sampling loop, and its ONNX export."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from detforge.models.detr.deformable_attention import MSDeformableAttention, ms_deform_attn

SHAPES = [(6, 9), (3, 5), (2, 2)]  # non-square levels


def _bilinear(img: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """Sample img [C, h, w] at normalised (x, y), zero padding, align_corners=False, by hand."""
    _, h, w = img.shape
    px, py = x * w - 0.5, y * h - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    out = torch.zeros(img.shape[0], dtype=torch.float64)
    for dx in (0, 1):
        for dy in (0, 1):
            xi, yi = x0 + dx, y0 + dy
            wgt = (1 - abs(px - xi)) * (1 - abs(py - yi))
            if 0 <= xi < w and 0 <= yi < h:
                out += wgt * img[:, yi, xi].double()
    return out


def _reference(value, shapes, locations, weights):
    """Per batch, query, head, level and point: sample and accumulate (value [B, S, M, Dh])."""
    b, _, m, dh = value.shape
    _, q, _, num_levels, p, _ = locations.shape
    starts = np.cumsum([0] + [h * w for h, w in shapes])
    out = torch.zeros(b, q, m, dh, dtype=torch.float64)
    for i in range(b):
        for j in range(q):
            for head in range(m):
                for lvl, (h, w) in enumerate(shapes):
                    img = value[i, starts[lvl] : starts[lvl + 1], head].T.reshape(dh, h, w)
                    for k in range(p):
                        x, y = locations[i, j, head, lvl, k].tolist()
                        out[i, j, head] += weights[i, j, head, lvl, k].double() * _bilinear(img, x, y)
    return out.reshape(b, q, m * dh)


def test_sampling_matches_per_point_loop():
    g = torch.Generator().manual_seed(0)
    b, q, m, dh, p = 2, 5, 2, 3, 3
    s = sum(h * w for h, w in SHAPES)
    value = torch.randn(b, s, m, dh, generator=g)
    # locations spread over and beyond [0, 1] (border and outside points), plus exact corners
    locations = torch.rand(b, q, m, len(SHAPES), p, 2, generator=g) * 1.3 - 0.15
    locations[0, 0, 0, :, 0] = torch.tensor([0.0, 0.0])
    locations[0, 0, 0, :, 1] = torch.tensor([1.0, 1.0])
    locations[1, 1, 1, :, 2] = torch.tensor([0.999, 0.001])
    weights = torch.rand(b, q, m, len(SHAPES), p, generator=g)
    got = ms_deform_attn(value, SHAPES, locations, weights)
    expected = _reference(value, SHAPES, locations, weights)
    assert got.shape == (b, q, m * dh)
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=0)


def test_module_with_box_references_and_mask():
    torch.manual_seed(0)
    attn = MSDeformableAttention(embed_dim=16, num_heads=2, num_levels=3, num_points=2)
    for param in attn.parameters():  # random offsets / weights, not the ray initialisation
        torch.nn.init.normal_(param, std=0.3)
    b, q, s = 2, 4, sum(h * w for h, w in SHAPES)
    query, value = torch.randn(b, q, 16), torch.randn(b, s, 16)
    boxes = torch.rand(b, q, 1, 4).expand(b, q, 3, 4)
    mask = torch.zeros(b, s, dtype=torch.bool)
    mask[1, :10] = True
    out = attn(query, boxes, value, SHAPES, mask)
    # the same thing by hand: value projection, masking, box-scaled offsets, softmax weights
    v = attn.value_proj(value).masked_fill(mask[..., None], 0).reshape(b, s, 2, 8)
    off = attn.sampling_offsets(query).reshape(b, q, 2, 3, 2, 2)
    w = attn.attention_weights(query).reshape(b, q, 2, 6).softmax(-1).reshape(b, q, 2, 3, 2)
    ref = boxes[:, :, None, :, None, :]
    loc = ref[..., :2] + off / 2 * ref[..., 2:] * 0.5
    expected = attn.output_proj(_reference(v.detach(), SHAPES, loc.detach(), w.detach()).float())
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    out.sum().backward()
    assert attn.sampling_offsets.weight.grad.abs().sum() > 0


def test_point_references_scale_offsets_by_level_size():
    attn = MSDeformableAttention(embed_dim=8, num_heads=1, num_levels=3, num_points=1)
    with pytest.raises(ValueError, match="2 or 4"):
        attn(torch.zeros(1, 1, 8), torch.zeros(1, 1, 3, 3), torch.zeros(1, 58, 8), SHAPES)
    with pytest.raises(ValueError, match="divisible"):
        MSDeformableAttention(embed_dim=10, num_heads=3)


def test_onnx_export_matches_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    attn = MSDeformableAttention(embed_dim=16, num_heads=2, num_levels=3, num_points=2).eval()

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = attn

        def forward(self, query, refs, value):
            return self.attn(query, refs, value, SHAPES)

    s = sum(h * w for h, w in SHAPES)
    inputs = (torch.randn(2, 4, 16), torch.rand(2, 4, 3, 4), torch.randn(2, s, 16))
    path = tmp_path / "attn.onnx"
    torch.onnx.export(
        Wrapper(),
        inputs,
        str(path),
        opset_version=17,
        input_names=["query", "refs", "value"],
        output_names=["out"],
        dynamic_axes={"query": {0: "b"}, "refs": {0: "b"}, "value": {0: "b"}},
        dynamo=False,
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batch3 = (torch.randn(3, 4, 16), torch.rand(3, 4, 3, 4), torch.randn(3, s, 16))
    for example in (inputs, batch3):
        got = session.run(None, {n: t.numpy() for n, t in zip(["query", "refs", "value"], example)})[0]
        with torch.no_grad():
            expected = Wrapper()(*example).numpy()
        assert np.abs(got - expected).max() < 1e-4
