"""The engines behind ``--engine``: onnxruntime gives the model's raw outputs back under their names (or the
detections of a graph with NMS), and the shared post-processing makes the detections the torch engine's."""

import numpy as np
import pytest
import torch

from detforge.engines import OnnxRuntimeEngine, TorchEngine, engine_detections, parse_engine_names
from detforge.errors import InvalidValueError
from detforge.export import export_onnx

pytest.importorskip("onnxruntime")


def _tiny(tiny_detector):
    torch.manual_seed(0)
    return tiny_detector(score_thresh=0.0).model.eval()


def _same_detections(got, expected, atol=1e-3):
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert torch.equal(g["labels"].long(), e["labels"]), "labels or their order differ"
        torch.testing.assert_close(g["boxes"], e["boxes"], atol=atol, rtol=0)
        torch.testing.assert_close(g["scores"], e["scores"], atol=1e-4, rtol=0)


def test_raw_outputs_come_back_under_export_raw_names(tiny_detector, tmp_path):
    model = _tiny(tiny_detector)
    path = export_onnx(model, tmp_path / "raw.onnx", image_size=(64, 64), dynamic_axes="auto")
    engine = OnnxRuntimeEngine(model, path, threads=1)
    assert not engine.returns_detections and engine.batch_size is None
    images = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        expected = model(images)
        got = engine(images)
    assert set(got) == set(expected)  # the raw outputs dict, tensors and the rest (feat_sizes)
    for key, value in expected.items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(got[key], value, atol=1e-4, rtol=0)
        else:
            assert got[key] == value, key
    sizes = [(64, 64), (48, 64), (64, 40)]  # postprocess clips to each image's real size
    _same_detections(engine_detections(engine, model, images, sizes), model.postprocess(expected, sizes))


def test_static_batch_runs_in_chunks_with_padding(tiny_detector, tmp_path):
    """A graph exported at batch 2 (static) on 3 images: two runs, the last padded; the reference is each
    image through the eager model alone."""
    model = _tiny(tiny_detector)
    path = export_onnx(model, tmp_path / "b2.onnx", example_input=torch.rand(2, 3, 64, 64))
    engine = OnnxRuntimeEngine(model, path, threads=1)
    assert engine.batch_size == 2 and engine.input_size == (64, 64)
    images = torch.rand(3, 3, 64, 64)
    got = engine_detections(engine, model, images, [(64, 64)] * 3)
    with torch.no_grad():
        expected = [model.postprocess(model(image[None]), [(64, 64)])[0] for image in images]
    _same_detections(got, expected)
    with pytest.raises(InvalidValueError, match=r"b2\.onnx: the graph takes 64x64 images, got 32x32"):
        engine(torch.rand(1, 3, 32, 32))


def test_graph_with_nms_returns_the_torch_engines_detections(tiny_detector, tmp_path):
    model = _tiny(tiny_detector)
    path = export_onnx(model, tmp_path / "nms.onnx", image_size=(64, 64), with_nms=True, dynamic_axes="auto")
    engine, torch_engine = OnnxRuntimeEngine(model, path, threads=1), TorchEngine(model)
    assert engine.returns_detections and not torch_engine.returns_detections
    images, sizes = torch.rand(2, 3, 64, 64), [(64, 64), (64, 64)]
    expected = engine_detections(torch_engine, model, images, sizes)
    assert all(len(e["boxes"]) > 0 for e in expected)
    _same_detections(engine_detections(engine, model, images, sizes), expected)


def test_engine_names_and_missing_file(tiny_detector, tmp_path):
    assert parse_engine_names("torch,onnxruntime", allow_several=True) == ["torch", "onnxruntime"]
    with pytest.raises(
        InvalidValueError, match="--engine 'tensorrt': unknown engine; engines: torch, onnxruntime"
    ):
        parse_engine_names("tensorrt")
    with pytest.raises(InvalidValueError, match="give one of"):
        parse_engine_names("torch,onnxruntime")
    with pytest.raises(FileNotFoundError, match=r"missing\.onnx: no such ONNX file"):
        OnnxRuntimeEngine(_tiny(tiny_detector), tmp_path / "missing.onnx")


def test_layer_major_outputs_keep_every_decoder_layer(tmp_path):
    """``rtdetr_n``'s ``[decoder layers, B, queries, C]`` outputs: a batch smaller than the layer count comes
    back whole (it was cut to its first layers once), and static-batch runs join on the batch axis."""
    from detforge.engines.ort import join_runs
    from detforge.export import get_exporter
    from detforge.models import create_model

    model = create_model("rtdetr_n", num_classes=3).eval()
    model.score_thresh = 0.0  # random weights: keep every query, so the last layer's scores are compared
    image = torch.rand(1, 3, 128, 128)
    path = get_exporter("onnx")(model, tmp_path / "rtdetr.onnx", example=image, dynamic=True)
    with torch.no_grad():
        expected = model.postprocess(model(image), [(128, 128)])[0]
    got = engine_detections(OnnxRuntimeEngine(model, path), model, image, [(128, 128)])[0]
    assert len(expected["scores"]) > 0
    torch.testing.assert_close(got["boxes"], expected["boxes"], atol=1e-3, rtol=0)
    torch.testing.assert_close(got["scores"], expected["scores"], atol=1e-4, rtol=0)

    parts = [np.arange(24).reshape(3, 2, 4), np.arange(24).reshape(3, 2, 4) + 100]  # [layers, B, C] x 2 runs
    joined = join_runs(parts, step=2, total=3)
    assert joined.shape == (3, 3, 4)
    np.testing.assert_array_equal(joined[:, 2], parts[1][:, 0])
