import pytest
import torch

from detforge.models.edge import Nexus, NexusConfig, nexus_training_step


def _t(boxes, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "labels": torch.tensor(labels)}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Nexus(num_classes=4)


def test_forward_shapes_three_scales(model):
    out = model(torch.rand(2, 3, 64, 96))
    for key, channels in (("cls_logits", 4), ("bbox_pred", 4), ("bbox_log_var", 4), ("centerness", 1)):
        assert [tuple(t.shape) for t in out[key]] == [
            (2, channels, 8, 12),
            (2, channels, 4, 6),
            (2, channels, 2, 3),
        ]
    assert all((t > 0).all() for t in out["bbox_pred"])


def test_forward_train_per_scale(model):
    scales = model.forward_train(torch.rand(3, 64, 64))
    assert len(scales) == 3
    assert scales[0]["cls_logits"].shape == (1, 4, 8, 8)
    assert scales[2]["bbox_pred"].shape == (1, 4, 2, 2)
    assert scales[1]["centerness"].shape == (1, 1, 4, 4)


def test_default_config():
    cfg = NexusConfig()
    m = Nexus.with_config(cfg)
    assert (cfg.input_width, cfg.input_height, cfg.num_classes) == (320, 320, 20)
    assert m.default_input_size == (320, 320) and m.score_thresh == 0.3 and m.nms_thresh == 0.5
    assert m.max_detections_per_image == 100 and m.pre_nms_topk == 1000 and m.nms_method == "hard"


def test_config_as_first_argument():
    cfg = NexusConfig(num_classes=3, input_width=128, input_height=96, score_thresh=0.2, nms_thresh=0.4)
    m = Nexus(cfg)
    assert (m.num_classes, m.default_input_size, m.score_thresh, m.nms_thresh) == (3, (96, 128), 0.2, 0.4)
    assert m.init_args["num_classes"] == 3 and m.init_args["input_size"] == (96, 128)
    with pytest.raises(ValueError, match="not both"):
        Nexus(cfg, num_classes=4)
    with pytest.raises(TypeError, match="NexusConfig"):
        Nexus({"num_classes": 3})


@pytest.mark.parametrize(
    "targets",
    [
        [_t([], []), _t([], [])],  # zero boxes
        [_t([[8, 8, 40, 40]], [1]), _t([], [])],  # one box
        [_t([[0, 0, 20, 30]], [0]), _t([[40, 50, 64, 64]], [3])],  # boxes on the border
        [_t([[5, 5, 20, 20], [10, 30, 60, 60], [30, 2, 50, 22]], [0, 1, 2]), _t([[1, 1, 63, 63]], [3])],
    ],
    ids=["zero", "one", "border", "mixed"],
)
def test_loss_cases_finite_and_differentiable(model, targets):
    model.train()
    out = model(torch.rand(2, 3, 64, 64))
    losses = model.loss(out, targets)
    assert {"loss", "cls_loss", "reg_loss", "centerness_loss", "uncertainty_loss", "num_pos"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    n_boxes = sum(len(t["boxes"]) for t in targets)
    assert (losses["num_pos"] > 0) == (n_boxes > 0)
    if n_boxes == 0:
        assert losses["reg_loss"] == 0 and losses["uncertainty_loss"] == 0
    losses["loss"].backward()
    assert model.head.cls_out.weight.grad is not None
    model.zero_grad()


def test_label_out_of_range_is_a_clear_error(model):
    out = model(torch.rand(1, 3, 64, 64))
    with pytest.raises(ValueError, match="label 9"):
        model.loss(out, [_t([[1, 1, 30, 30]], [9])])


def test_wrong_channels_is_a_clear_error(model):
    with pytest.raises(ValueError, match=r"Tensor\[B, 3, H, W\]"):
        model(torch.rand(1, 1, 64, 64))


def test_training_step_reduces_loss():
    torch.manual_seed(0)
    m = Nexus(num_classes=2)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    frame = torch.rand(3, 64, 64) * 0.2
    frame[:, 16:48, 8:40] = 0.9
    boxes, classes = torch.tensor([[8.0, 16.0, 40.0, 48.0]]), torch.tensor([1])
    losses = [nexus_training_step(m, frame, boxes, classes, opt) for _ in range(12)]
    assert losses[-1] < 0.5 * losses[0]


def test_postprocess_format_and_clipping(model):
    model.eval()
    out = model(torch.rand(2, 3, 64, 64))
    for o in out["cls_logits"]:
        o.fill_(5.0)  # every location confident
    for o in out["bbox_pred"]:
        o.fill_(100.0)  # boxes far past the image
    dets = model.postprocess(out, [(64, 64), (40, 50)])
    for det, (h, w) in zip(dets, [(64, 64), (40, 50)], strict=True):
        assert det["boxes"].shape[1] == 4 and det["labels"].dtype == torch.int64
        assert len(det["boxes"]) == len(det["scores"]) == len(det["labels"]) == len(det["box_log_var"]) > 0
        assert (
            (det["boxes"][:, 2] <= w).all() and (det["boxes"][:, 3] <= h).all() and (det["boxes"] >= 0).all()
        )


def test_track_frame_returns_the_tracker_protocol_and_keeps_track_ids():
    torch.manual_seed(0)
    m = Nexus(num_classes=2, score_thresh=0.0)  # report every box of the untrained model
    frame = torch.rand(3, 64, 64)
    first = m.track_frame(frame)
    second = m.track_frame(frame[None])
    assert {"boxes", "scores", "labels", "track_ids", "detection_indices", "box_log_var"} <= set(first)
    n = len(first["boxes"])
    assert n > 0 and first["box_log_var"].shape == (n, 4) and first["track_ids"].dtype == torch.int64
    assert first["labels"].dtype == torch.int64 and first["scores"].shape == (n,)
    assert first["track_ids"].tolist() == list(range(1, n + 1))
    assert second["track_ids"].tolist() == first["track_ids"].tolist()  # the same scene: the same tracks
    expected = m.postprocess(m.eval()(frame[None]), [(64, 64)])[0]
    torch.testing.assert_close(first["boxes"], expected["boxes"])  # the detections themselves, not smoothed
    torch.testing.assert_close(first["box_log_var"], expected["box_log_var"])
    assert m.video is not None
    m.reset()
    assert m.video is None
    assert m.track_frame(frame)["track_ids"].tolist() == list(range(1, n + 1))  # ids restart after reset
    with pytest.raises(ValueError, match="one frame"):
        m.track_frame(torch.rand(2, 3, 64, 64))


def test_shared_head_gives_the_same_outputs_in_train_and_eval_mode():
    """The head is shared by P3, P4 and P5: a BatchNorm in it would train on per-level batch statistics and
    infer with running statistics mixed over the levels (eval-mode boxes and scores far off the trained ones)."""
    torch.manual_seed(0)
    head = Nexus(num_classes=3).head
    feats = [torch.randn(2, 96, 8, 8) * 3 + 1, torch.randn(2, 96, 4, 4) * 0.5 - 2, torch.randn(2, 96, 2, 2)]
    head.train()
    for _ in range(3):  # a BatchNorm would update its running statistics here
        train_out = [head(f, level, stride) for level, (f, stride) in enumerate(zip(feats, (8, 16, 32)))]
    head.eval()
    eval_out = [head(f, level, stride) for level, (f, stride) in enumerate(zip(feats, (8, 16, 32)))]
    for train_level, eval_level in zip(train_out, eval_out, strict=True):
        for t, e in zip(train_level, eval_level, strict=True):
            torch.testing.assert_close(t, e)


def test_checkpoints_from_before_the_gate_removal_load():
    """Nexus had a predictive-coding predictor (``predictor.*`` weights) until it was removed, untrained."""
    m = Nexus(num_classes=2)
    old = {**m.state_dict(), "predictor.delta.1.weight": torch.zeros(24, 24, 1, 1)}
    assert not m.load_state_dict(old).unexpected_keys
