import pytest
import torch

from detforge.models.heads import FCOSHead

STRIDES = (8, 16, 32)
SIZES = [(6, 5), (3, 3), (2, 1)]


def features(batch=2, channels=32):
    return [torch.rand(batch, channels, h, w) for h, w in SIZES]


def test_shapes_and_feat_sizes():
    head = FCOSHead(32, 5, STRIDES, num_convs=2)
    out = head(features())
    p = sum(h * w for h, w in SIZES)
    assert out["cls_logits"].shape == (2, p, 5)
    assert out["box_reg"].shape == (2, p, 4)
    assert out["centerness"].shape == (2, p)
    assert out["feat_sizes"] == SIZES


@pytest.mark.parametrize("centerness_on_reg", [True, False])
def test_flattening_is_level_major_then_row_major(centerness_on_reg):
    head = FCOSHead(32, 3, STRIDES, num_convs=1, centerness_on_reg=centerness_on_reg).eval()
    for p in head.parameters():  # random weights so every output differs
        torch.nn.init.normal_(p, std=0.2)
    feats = features()
    out = head(feats)
    offset = 0
    for level, (x, stride) in enumerate(zip(feats, STRIDES)):
        cls_feat, box_feat = head.cls_tower(x), head.box_tower(x)
        cls = head.cls_logits(cls_feat)  # [B, C, H, W]
        dist = torch.exp(head.scales[level] * head.box_reg(box_feat)) * stride
        ctr = head.centerness(box_feat if centerness_on_reg else cls_feat)[:, 0]
        h, w = x.shape[-2:]
        for y in range(h):
            for xx in range(w):
                p = offset + y * w + xx
                torch.testing.assert_close(out["cls_logits"][:, p], cls[:, :, y, xx])
                torch.testing.assert_close(out["box_reg"][:, p], dist[:, :, y, xx])
                torch.testing.assert_close(out["centerness"][:, p], ctr[:, y, xx])
        offset += h * w


def test_initial_scores_follow_prior_prob_and_distances_are_positive_pixels():
    head = FCOSHead(32, 4, STRIDES, num_convs=2, prior_prob=0.01)
    out = head(features())
    probs = out["cls_logits"].sigmoid()
    assert abs(float(probs.mean()) - 0.01) < 1e-3 and float(probs.max()) < 0.02
    assert (out["box_reg"] > 0).all()
    # Weights start near zero, so each level's distances start near its stride.
    first = out["box_reg"][:, : SIZES[0][0] * SIZES[0][1]]
    assert abs(float(first.mean()) - 8.0) < 0.8 and float(first.min()) > 4.0 and float(first.max()) < 16.0


def test_norms_and_validation():
    assert any(isinstance(m, torch.nn.GroupNorm) for m in FCOSHead(32, 2, STRIDES).modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in FCOSHead(32, 2, STRIDES, norm="BN").modules())
    assert not any(
        isinstance(m, torch.nn.GroupNorm | torch.nn.BatchNorm2d)
        for m in FCOSHead(32, 2, STRIDES, norm="none").modules()
    )
    with pytest.raises(ValueError, match=r"norm must be one of \('GN', 'BN', 'none'\)"):
        FCOSHead(32, 2, STRIDES, norm="LN")
    with pytest.raises(ValueError, match="3 levels, got 2"):
        FCOSHead(32, 2, STRIDES)(features()[:2])


def test_gradients_reach_every_parameter():
    head = FCOSHead(32, 2, STRIDES, num_convs=1)
    out = head(features())
    (out["cls_logits"].sum() + out["box_reg"].sum() + out["centerness"].sum()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
