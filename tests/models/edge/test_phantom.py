import numpy as np
import pytest
import torch

from detforge.assigners.single_scale import SingleScaleAssigner
from detforge.models.edge import Phantom, PhantomConfig, phantom_training_step
from detforge.models.edge.common import count_parameters


def _faces(*boxes):
    b = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    return {"boxes": b, "labels": torch.zeros(len(b), dtype=torch.int64)}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Phantom()


def test_default_config():
    cfg = PhantomConfig()
    assert (cfg.input_width, cfg.input_height, cfg.backbone_refresh_interval) == (128, 128, 30)
    assert (cfg.tracker_hidden_size, cfg.detection_threshold) == (64, 0.5)
    m = Phantom.with_config(cfg)
    assert m.num_classes == 1 and m.default_input_size == (128, 128) and m.memory.hidden_size == 64
    assert (m.score_thresh, m.nms_thresh, m.max_detections_per_image) == (0.05, 0.3, 50)


def test_config_as_first_argument():
    cfg = PhantomConfig(input_width=96, input_height=64, nms_thresh=0.4, max_detections_per_image=7)
    m = Phantom(cfg)
    assert m.default_input_size == (64, 96) and m.nms_thresh == 0.4 and m.max_detections_per_image == 7
    assert m.video_runner().nms_thresh == 0.4
    with pytest.raises(ValueError, match="not both"):
        Phantom(cfg, event_threshold=0.2)


def test_bad_config_is_a_clear_error():
    with pytest.raises(ValueError, match="backbone_refresh_interval"):
        Phantom(backbone_refresh_interval=0)
    with pytest.raises(ValueError, match="detection_threshold"):
        Phantom(detection_threshold=1.5)


@pytest.mark.parametrize(("h", "w"), [(64, 48), (60, 44), (12, 20)])
def test_forward_train_shapes(model, h, w):
    """Output cells are stride 4 for any multiple of 4."""
    cls, bbox = model.forward_train(torch.rand(3, h, w))
    assert cls.shape == (1, 1, h // 4, w // 4) and bbox.shape == (1, 4, h // 4, w // 4)


def test_parameter_budget_and_strides(model):
    """The issue's ~126K parameters (network and track memory); one stride-4 output map."""
    assert 110_000 <= count_parameters(model) <= 140_000
    assert model.net.stride == model.stride == 4
    assert model.video_runner().align == model.net.stride  # crops start on the output grid


def test_output_cell_sees_a_wide_neighbourhood(model):
    """Faces up to ~80 px need context that far: the centre cell must react to pixels 36 px away (receptive
    field measured by gradient)."""
    torch.manual_seed(0)
    x = torch.rand(1, 3, 128, 128, requires_grad=True)
    net = Phantom().net.eval()
    cls, _ = net(x)
    cls[0, 0, 16, 16].backward()
    reach = x.grad.abs().sum(dim=(0, 1)).nonzero()  # [K, 2] pixels that move the centre cell
    assert int((reach - 64).abs().max()) >= 36


@pytest.mark.parametrize(
    "targets",
    [
        [_faces(), _faces()],
        [_faces([10, 10, 30, 34]), _faces()],
        [_faces([0, 0, 12, 12]), _faces([40, 44, 64, 64])],
        [_faces([2, 2, 20, 20], [30, 30, 60, 62], [5, 40, 25, 60]), _faces([1, 1, 63, 63])],
    ],
    ids=["zero", "one", "border", "mixed"],
)
def test_loss_cases(model, targets):
    model.train()
    out = model(torch.rand(2, 3, 64, 64))
    losses = model.loss(out, targets)
    n = sum(len(t["boxes"]) for t in targets)
    assert int(losses["num_pos"]) == n  # one centre cell per face, no two share a cell here
    assert all(torch.isfinite(v) for v in losses.values())
    if n == 0:
        assert losses["reg_loss"] == 0
    losses["loss"].backward()
    model.zero_grad()


def test_postprocess_decodes_the_assigner_encoding(model):
    """Feeding the assigner's own targets back as predictions must give back the boxes."""
    faces = torch.tensor([[6.0, 10.0, 30.0, 40.0], [40.0, 8.0, 60.0, 24.0]])
    targets = SingleScaleAssigner(4)((16, 16), faces[None], torch.ones(1, 2, dtype=torch.bool))
    out = {
        "face_cls": (targets.cls[:, None] * 20 - 10),  # [1, 1, 16, 16] logits: +10 at faces, -10 elsewhere
        "face_bbox": targets.bbox.permute(0, 3, 1, 2),  # [1, 4, 16, 16]
    }
    det = model.postprocess(out, [(64, 64)])[0]
    order = det["boxes"][:, 0].argsort()
    torch.testing.assert_close(det["boxes"][order], faces)
    assert det["labels"].tolist() == [0, 0]


def test_training_step_reduces_loss():
    torch.manual_seed(0)
    m = Phantom()
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    frame = torch.rand(3, 64, 64) * 0.2
    frame[:, 12:36, 20:40] = 0.9
    losses = [
        phantom_training_step(m, frame, torch.tensor([[20.0, 12.0, 40.0, 36.0]]), opt) for _ in range(12)
    ]
    assert losses[-1] < 0.5 * losses[0]
    assert phantom_training_step(m, frame, torch.zeros(0, 4), opt) >= 0  # a frame without faces trains too


def test_onnx_graph_handles_sides_off_the_stride_8_grid(tmp_path):
    """The exported graph (crops of the sparse video path) matches torch also at sides of 4 mod 8."""
    pytest.importorskip("onnxruntime")
    from detforge.models.edge.onnx import export_edge_onnx, ort_session

    torch.manual_seed(0)
    m = Phantom().eval()
    session = ort_session(export_edge_onnx(m, tmp_path / "phantom.onnx", input_size=(64, 64)), threads=1)
    x = torch.rand(1, 3, 60, 44)
    cls, deltas = session.run(None, {"images": x.numpy()})
    with torch.no_grad():
        want_cls, want_deltas = m.net(x)
    np.testing.assert_allclose(cls, want_cls.numpy(), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(deltas, want_deltas.numpy(), rtol=1e-3, atol=1e-3)
