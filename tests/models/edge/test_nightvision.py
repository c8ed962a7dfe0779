import pytest
import torch

from detforge.models.edge import NightVision, NightVisionConfig, ThermalDomain
from detforge.models.edge.nightvision import ThermalStem


def _t(boxes, labels, **extra):
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels),
        **extra,
    }


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return NightVision.with_config(NightVisionConfig.edge(num_classes=3))


def test_presets():
    assert NightVisionConfig.wildlife(4).num_classes == 4
    assert NightVisionConfig.human().num_classes == 1
    assert NightVisionConfig.vehicle(2).domain is ThermalDomain.Vehicle
    inter = NightVisionConfig.interstellar(bands=5, num_classes=2)
    assert inter.in_chans == 5 and NightVision.with_config(inter).in_chans == 5
    assert NightVisionConfig.multi_domain(6).domain_head and not NightVisionConfig.edge().domain_head
    assert [d.name for d in ThermalDomain] == ["Wildlife", "Human", "Interstellar", "Vehicle", "General"]
    with pytest.raises(ValueError, match="bands"):
        NightVisionConfig.interstellar(bands=0)


def test_forward_detection_and_flat_shapes(model):
    x = torch.rand(2, 1, 64, 96)
    levels = model.forward_detection(x)
    assert [tuple(c.shape) for c, _, _, _ in levels] == [(2, 3, 8, 12), (2, 3, 4, 6), (2, 3, 2, 3)]
    assert all(b.shape[1] == 4 and o.shape[1] == 1 and d is None for _, b, o, d in levels)
    cls, boxes, obj = model.forward_flat(x)
    a = 8 * 12 + 4 * 6 + 2 * 3
    assert cls.shape == (2, a, 3) and boxes.shape == (2, a, 4) and obj.shape == (2, a, 1)
    assert (boxes[..., 2:] > boxes[..., :2]).all()


def test_domain_head():
    m = NightVision.with_config(NightVisionConfig.multi_domain(2))
    levels = m.forward_detection(torch.rand(2, 1, 64, 64))
    assert levels[0][3].shape == (2, len(ThermalDomain))
    out = m(torch.rand(2, 1, 64, 64))
    targets = [
        _t([[4, 4, 30, 30]], [1], domain=ThermalDomain.Human),
        _t([], [], domain=ThermalDomain.Vehicle),
    ]
    losses = m.loss(out, targets)
    assert "domain_loss" in losses and torch.isfinite(losses["loss"])
    assert m.postprocess(out, [(64, 64)] * 2)[0]["domain"] in range(len(ThermalDomain))


def test_thermal_stem_is_invariant_to_camera_gain_and_offset():
    stem = ThermalStem(1, 8).eval()
    x = torch.rand(2, 1, 32, 32)
    torch.testing.assert_close(stem(x), stem(3.0 * x + 0.5), atol=1e-2, rtol=1e-2)  # eps = 1e-3 of std
    assert torch.isfinite(stem(torch.full((1, 1, 16, 16), 0.3))).all()  # a flat image stays finite


def test_decode_matches_hand_computation(model):
    model.eval()
    with torch.no_grad():
        out = model(torch.rand(1, 1, 32, 32))  # levels 4 x 4, 2 x 2, 1 x 1
    out["bbox_pred"][0][0, :, 2, 1] = torch.tensor(
        [0.5, -0.25, 0.0, 1.0]
    )  # cell (row 2, col 1): centre (12, 20)
    _, boxes = model.decode(out)
    e = torch.e
    torch.testing.assert_close(boxes[0, 2 * 4 + 1], torch.tensor([16 - 4, 18 - 4 * e, 16 + 4, 18 + 4 * e]))


def test_config_as_first_argument():
    cfg = NightVisionConfig.edge(num_classes=2)
    m = NightVision(cfg)
    assert m.num_classes == 2 and m.heads[0].cls_out.in_channels == 64
    assert (m.score_thresh, m.nms_thresh, m.max_detections_per_image) == (0.05, 0.5, 100)
    assert m.init_args["fpn_channels"] == 64
    with pytest.raises(ValueError, match="not both"):
        NightVision(cfg, fpn_channels=32)


@pytest.mark.parametrize(
    "targets",
    [
        [_t([], []), _t([], [])],
        [_t([[8, 8, 40, 40]], [2]), _t([], [])],
        [_t([[0, 0, 16, 24]], [0]), _t([[40, 48, 64, 64]], [1])],
        [
            _t([[5, 5, 20, 20], [10, 30, 60, 60]], [0, 1]),
            _t([[1, 1, 63, 63], [20, 20, 30, 30], [2, 40, 20, 60]], [2, 0, 1]),
        ],
    ],
    ids=["zero", "one", "border", "mixed"],
)
def test_loss_cases(model, targets):
    model.train()
    out = model(torch.rand(2, 1, 64, 64))
    losses = model.loss(out, targets)
    assert {"loss", "cls_loss", "reg_loss", "obj_loss", "num_pos"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    n = sum(len(t["boxes"]) for t in targets)
    assert (losses["num_pos"] >= n) if n else (losses["num_pos"] == 0 and losses["reg_loss"] == 0)
    losses["loss"].backward()
    model.zero_grad()


def test_training_reduces_loss():
    torch.manual_seed(0)
    m = NightVision.with_config(NightVisionConfig.edge(num_classes=1))
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    x = torch.rand(1, 1, 64, 64) * 0.2
    x[..., 16:40, 8:36] = 0.9
    targets = [_t([[8, 16, 36, 40]], [0])]
    losses = []
    for _ in range(30):  # SimOTA re-assigns as the boxes move, so single steps are noisy
        loss = m.loss(m(x), targets)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert sum(losses[-5:]) / 5 < 0.6 * losses[0]


def test_postprocess_clips_and_filters(model):
    model.eval()
    out = model(torch.rand(1, 1, 64, 64))
    for c, o in zip(out["cls_logits"], out["obj_logits"], strict=True):
        c.fill_(6.0)
        o.fill_(6.0)
    for b in out["bbox_pred"]:
        b[:, 2:] = 4.0  # boxes e^4 strides wide: far past the image
    det = model.postprocess(out, [(50, 60)])[0]
    assert len(det["boxes"]) > 0 and (det["boxes"][:, 2] <= 60).all() and (det["boxes"][:, 3] <= 50).all()
    assert det["labels"].dtype == torch.int64


def test_wrong_band_count_is_a_clear_error(model):
    with pytest.raises(ValueError, match=r"Tensor\[B, 1, H, W\]"):
        model(torch.rand(1, 3, 64, 64))
