import pytest
import torch

from detforge.models.heads import YOLOXHead

STRIDES = (8, 16, 32)
SIZES = [(4, 6), (2, 3), (1, 2)]


def features(batch=2, channels=16):
    return [torch.rand(batch, channels, h, w) for h, w in SIZES]


def test_shapes_and_decoded_boxes_match_the_raw_branch():
    head = YOLOXHead(16, 3, STRIDES, width=16).eval()
    for p in head.parameters():
        torch.nn.init.normal_(p, std=0.1)
    feats = features()
    out = head(feats)
    a = sum(h * w for h, w in SIZES)
    assert out["cls_logits"].shape == (2, a, 3)
    assert out["boxes"].shape == (2, a, 4)
    assert out["obj_logits"].shape == (2, a)
    assert out["feat_sizes"] == SIZES
    offset = 0
    for level, (x, stride) in enumerate(zip(feats, STRIDES)):
        stem = head.stems[level](x)
        raw = head.box_preds[level](head.box_branches[level](stem))  # [B, 4, H, W]
        obj = head.obj_preds[level](head.box_branches[level](stem))[:, 0]
        cls = head.cls_preds[level](head.cls_branches[level](stem))
        h, w = x.shape[-2:]
        for y in range(h):
            for xx in range(w):
                p = offset + y * w + xx
                cx = (xx + 0.5) * stride + raw[:, 0, y, xx] * stride
                cy = (y + 0.5) * stride + raw[:, 1, y, xx] * stride
                bw, bh = raw[:, 2, y, xx].exp() * stride, raw[:, 3, y, xx].exp() * stride
                expected = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], dim=-1)
                torch.testing.assert_close(out["boxes"][:, p], expected, rtol=1e-5, atol=1e-4)
                torch.testing.assert_close(out["obj_logits"][:, p], obj[:, y, xx])
                torch.testing.assert_close(out["cls_logits"][:, p], cls[:, :, y, xx])
        offset += h * w


def test_init_prior_and_silu():
    head = YOLOXHead(16, 2, STRIDES, width=16, prior_prob=0.01)
    assert any(isinstance(m, torch.nn.SiLU) for m in head.modules())
    torch.testing.assert_close(head.cls_preds[0].bias, torch.full((2,), -4.59512), atol=1e-4, rtol=0)
    torch.testing.assert_close(head.obj_preds[2].bias, torch.full((1,), -4.59512), atol=1e-4, rtol=0)


def test_validation():
    with pytest.raises(ValueError, match=r"act must be one of \('silu', 'relu', 'lrelu'\)"):
        YOLOXHead(16, 2, STRIDES, act="gelu")
    with pytest.raises(ValueError, match="3 levels, got 1"):
        YOLOXHead(16, 2, STRIDES, width=8)(features()[:1])
