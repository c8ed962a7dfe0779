import numpy as np
import pytest
import torch

from detforge.commands.export import main
from detforge.engine.validate import load_detector

ort = pytest.importorskip("onnxruntime")


def _run(path, image):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return session, session.run(None, {name: image.numpy()})


def test_export_raw_heads_match_pytorch(tiny_checkpoint, tmp_path):
    out = tmp_path / "raw.onnx"
    assert main(["--ckpt", str(tiny_checkpoint), "--out", str(out)]) == 0
    model = load_detector(tiny_checkpoint, "cpu")
    image = torch.rand(1, 3, 64, 64)
    _, onnx_outputs = _run(out, image)
    with torch.no_grad():
        torch_outputs = [v for v in model(image).values() if isinstance(v, torch.Tensor)]
    by_shape = {tuple(np.asarray(o).shape): np.asarray(o) for o in onnx_outputs}
    for t in torch_outputs:  # every raw head tensor is a graph output with the same values
        assert tuple(t.shape) in by_shape, (tuple(t.shape), list(by_shape))
        np.testing.assert_allclose(by_shape[tuple(t.shape)], t.numpy(), atol=1e-4, rtol=0)


def test_export_with_nms_matches_predict(tiny_checkpoint, tmp_path):
    out = tmp_path / "nms.onnx"
    assert main(["--ckpt", str(tiny_checkpoint), "--out", str(out), "--nms", "--dynamic"]) == 0
    model = load_detector(tiny_checkpoint, "cpu")
    image = torch.rand(1, 3, 64, 64)
    session, outputs = _run(out, image)
    named = {o.name: np.asarray(v) for o, v in zip(session.get_outputs(), outputs, strict=True)}
    assert {"boxes", "scores", "labels"} <= set(named)
    pred = model.predict(image)[0]
    scores = named["scores"].reshape(-1)
    keep = scores > 0
    k = min(int(keep.sum()), len(pred["scores"]))
    assert k > 0
    np.testing.assert_allclose(np.sort(scores[keep])[::-1][:k], pred["scores"][:k].numpy(), atol=1e-4, rtol=0)
    boxes = named["boxes"].reshape(-1, 4)[keep][:k]
    np.testing.assert_allclose(boxes, pred["boxes"][:k].numpy(), atol=1e-4, rtol=0)


def test_int8_without_data_falls_back_to_dynamic_quantization(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "tiny.onnx"
    assert main(["--ckpt", str(tiny_checkpoint), "--out", str(out), "--format", "int8"]) == 0
    assert "dynamic quantization" in capsys.readouterr().out
    assert out.with_suffix(".int8.onnx").stat().st_size < out.stat().st_size


def test_int8_with_nms_calibrated_on_data_runs(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "nms.onnx"
    argv = [
        "--ckpt",
        str(tiny_checkpoint),
        "--out",
        str(out),
        "--format",
        "int8",
        "--nms",
        "--data",
        "synthetic:4",
    ]
    assert main([*argv, "--calib", "2"]) == 0
    assert "calibrated on 2 batches" in capsys.readouterr().out
    q = out.with_suffix(".int8.onnx")
    _, (boxes, scores, labels, counts) = _run(q, torch.rand(1, 3, 64, 64))
    assert boxes.shape[-1] == 4 and counts.shape == (1,)
