import numpy as np
import pytest
import torch

from detforge.models import create_model
from detforge.models.edge.onnx import export_edge_onnx, ort_network, ort_session, quantize_edge_int8
from detforge.models.edge.phantom_video import PhantomVideo

pytest.importorskip("onnxruntime")


def _inputs(model, h, w):
    return [torch.rand(1, model.in_chans, h, w)]


def _reference(model, inputs):
    with torch.no_grad():
        name = model.__class__.__name__
        if name == "Nexus":
            out = model(inputs[0])
            return [t for k in ("cls_logits", "bbox_pred", "bbox_log_var", "centerness") for t in out[k]]
        if name == "Phantom":
            return list(model.net(inputs[0]))
        return list(model.forward_flat(inputs[0]))


@pytest.mark.parametrize("name", ["nexus", "phantom", "nightvision_edge"])
def test_onnx_matches_torch_and_int8_is_smaller(name, tmp_path):
    torch.manual_seed(0)
    model = create_model(name).eval()
    path = export_edge_onnx(model, tmp_path / f"{name}.onnx", input_size=(64, 64))
    session = ort_session(path, threads=1)
    inputs = _inputs(model, 64, 64)
    feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs, strict=True)}
    outputs = session.run(None, feeds)
    reference = _reference(model, inputs)
    assert len(outputs) == len(reference)
    for got, want in zip(outputs, reference, strict=True):
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-3, atol=1e-3)

    calibration = [[t.numpy() for t in _inputs(model, 64, 64)] for _ in range(2)]
    int8 = quantize_edge_int8(path, tmp_path / f"{name}.int8.onnx", calibration)
    assert int8.stat().st_size < 0.5 * path.stat().st_size
    quantized = ort_session(int8, threads=1).run(None, feeds)
    assert [q.shape for q in quantized] == [o.shape for o in outputs]


def test_phantom_graph_takes_any_multiple_of_four_and_drives_the_video_runner(tmp_path):
    model = create_model("phantom").eval()
    session = ort_session(export_edge_onnx(model, tmp_path / "phantom.onnx"), threads=1)
    crop = torch.rand(1, 3, 40, 24)
    cls, deltas = session.run(None, {"images": crop.numpy()})
    assert cls.shape == (1, 1, 10, 6) and deltas.shape == (1, 4, 10, 6)
    video = PhantomVideo(ort_network(session), memory=model.memory)
    frame = np.random.default_rng(0).uniform(0, 1, (3, 128, 128)).astype(np.float32)
    video.step(frame)
    moved = frame.copy()
    moved[:, 10:20, 10:20] = 1.0
    video.step(moved)
    assert video.profile.modes == ["full", "sparse"]


def test_export_rejects_other_models(tmp_path):
    with pytest.raises(TypeError, match="not a detforge Detector"):
        export_edge_onnx(torch.nn.Conv2d(1, 1, 1), tmp_path / "x.onnx", input_size=(8, 8))


def test_calibration_input_count_is_checked(tmp_path):
    model = create_model("phantom").eval()
    path = export_edge_onnx(model, tmp_path / "p.onnx", input_size=(32, 32))
    with pytest.raises(ValueError, match="calibration items need 1 arrays"):
        quantize_edge_int8(path, tmp_path / "q.onnx", [[np.zeros((1, 3, 32, 32), np.float32)] * 2])


def test_int8_keeps_one_copy_of_a_shared_layer(tmp_path):
    """A layer applied at several levels (Nexus's head) is one weight in the INT8 file, not one per use."""
    import onnx
    from onnx import numpy_helper

    from detforge.models.edge.onnx import compact_names

    class SharedHead(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = torch.nn.Conv2d(3, 16, 3, padding=1)
            self.down = torch.nn.Conv2d(16, 16, 3, stride=2, padding=1)
            self.head = torch.nn.Conv2d(16, 8, 3, padding=1)  # used on both levels

        def forward(self, x):
            p3 = self.stem(x).relu()  # [1, 16, H, W]
            p4 = self.down(p3).relu()  # [1, 16, H/2, W/2]
            return self.head(p3), self.head(p4)

    torch.manual_seed(0)
    model = SharedHead().eval()
    fp32 = tmp_path / "shared.onnx"
    x = torch.rand(1, 3, 32, 32)
    torch.onnx.export(model, (x,), str(fp32), dynamo=False, input_names=["x"], output_names=["a", "b"])
    compact_names(fp32)
    int8 = quantize_edge_int8(
        fp32, tmp_path / "shared.int8.onnx", [torch.rand(1, 3, 32, 32).numpy() for _ in range(4)]
    )
    weights = [
        numpy_helper.to_array(i)
        for i in onnx.load(str(int8)).graph.initializer
        if i.data_type == onnx.TensorProto.INT8
    ]
    assert sorted(w.shape for w in weights if w.ndim == 4) == [(8, 16, 3, 3), (16, 3, 3, 3), (16, 16, 3, 3)]
    got = ort_session(int8, threads=1).run(None, {"x": x.numpy()})
    with torch.no_grad():
        want = model(x)
    for g, w in zip(got, want, strict=True):
        assert np.corrcoef(g.ravel(), w.numpy().ravel())[0, 1] > 0.99


def test_detforge_export_int8_phantom_is_under_130_kb(tmp_path, one_step_checkpoint, capsys):
    """The one exporter (``detforge export --format int8``, static INT8 calibrated on the run's frames) writes
    Phantom's INT8 file under the 130 KB budget, and its fp32 graph matches PyTorch."""
    from detforge.commands.export import main
    from detforge.data.synthetic import SyntheticShapes
    from detforge.data.writers import write_widerface
    from detforge.engine.validate import load_detector
    from detforge.export import check_onnx

    root = tmp_path / "wider"
    for split, seed, n in (("train", 0, 6), ("val", 1, 2)):
        faces = SyntheticShapes(n, image_size=64, num_classes=1, seed=seed, min_size=8, max_objects=3)
        write_widerface(faces, root, split=split)
    ckpt = one_step_checkpoint(tmp_path / "phantom.ckpt", "phantom", f"widerface:{root}")
    out = tmp_path / "phantom.onnx"
    argv = ["--ckpt", str(ckpt), "--out", str(out), "--format", "int8", "--data", f"widerface:{root}"]
    assert main([*argv, "--calib", "4", "--imgsz", "128"]) == 0
    assert "calibrated on 4 batches" in capsys.readouterr().out
    int8 = out.with_suffix(".int8.onnx")
    assert int8.stat().st_size < 130_000 < out.stat().st_size
    model = load_detector(ckpt, "cpu").model
    assert check_onnx(model, out, torch.rand(1, 3, 128, 128)) < 1e-4
    got = ort_session(int8, threads=1).run(
        None, {"images": np.random.default_rng(0).random((1, 3, 128, 128), np.float32)}
    )
    assert [g.shape for g in got] == [(1, 1, 32, 32), (1, 4, 32, 32)]
