"""The OpenVINO engine and export format: the model's raw outputs back under their names (or the detections of
a graph with NMS), so the shared post-processing gives the torch engine's detections; the IR carries
detforge's metadata so it runs alone."""

import numpy as np
import pytest
import torch

from detforge.engines import TorchEngine, engine_detections, parse_engine_names
from detforge.errors import InvalidValueError

pytest.importorskip("openvino")
pytest.importorskip("onnxruntime")

from detforge.engines.openvino_engine import OpenVINOEngine  # noqa: E402
from detforge.export import get_exporter, list_formats, read_metadata  # noqa: E402
from detforge.export.openvino import export_openvino  # noqa: E402


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
    path = export_openvino(model, tmp_path / "raw.xml", example=torch.rand(1, 3, 64, 64), dynamic=True)
    assert path.is_file() and path.with_suffix(".bin").is_file()
    engine = OpenVINOEngine(model, path, threads=1)
    assert engine.name == "openvino" and not engine.returns_detections and engine.batch_size is None
    images = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        expected = model(images)
        got = engine(images)
    assert set(got) == set(expected)
    for key, value in expected.items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(got[key], value, atol=1e-4, rtol=0)
        else:
            assert got[key] == value, key
    sizes = [(64, 64), (48, 64), (64, 40)]
    _same_detections(engine_detections(engine, model, images, sizes), model.postprocess(expected, sizes))


def test_static_batch_and_graph_with_nms(tiny_detector, tmp_path):
    model = _tiny(tiny_detector)
    static = export_openvino(model, tmp_path / "b2.xml", example=torch.rand(2, 3, 64, 64), dynamic=False)
    engine = OpenVINOEngine(model, static, threads=1)
    assert engine.batch_size == 2 and engine.input_size == (64, 64)
    images = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        expected = [model.postprocess(model(image[None]), [(64, 64)])[0] for image in images]
    _same_detections(engine_detections(engine, model, images, [(64, 64)] * 3), expected)
    with pytest.raises(InvalidValueError, match=r"b2\.xml: the graph takes 64x64 images, got 32x32"):
        engine(torch.rand(1, 3, 32, 32))

    nms = export_openvino(model, tmp_path / "nms.xml", example=torch.rand(1, 3, 64, 64), nms=True)
    engine = OpenVINOEngine(model, nms, threads=1)
    assert engine.returns_detections
    sizes = [(64, 64), (64, 64)]
    images = torch.rand(2, 3, 64, 64)
    expected = engine_detections(TorchEngine(model), model, images, sizes)
    assert all(len(e["boxes"]) > 0 for e in expected)
    _same_detections(engine_detections(engine, model, images, sizes), expected)


def test_registered_format_keeps_metadata_and_fp16(tiny_detector, tmp_path):
    assert "openvino" in list_formats() and "openvino" in parse_engine_names("torch,openvino", True)
    model = _tiny(tiny_detector)
    metadata = {"detforge.format": "1", "detforge.hparams": '{"a": "<x & y>"}', "detforge.best_conf": ""}
    exporter = get_exporter("openvino")
    fp32 = exporter(model, tmp_path / "m.xml", example=torch.rand(1, 3, 64, 64), metadata=metadata)
    fp16 = exporter(
        model, tmp_path / "h.xml", example=torch.rand(1, 3, 64, 64), metadata=metadata, precision="fp16"
    )
    assert read_metadata(fp32) == metadata == read_metadata(fp16)
    assert fp16.with_suffix(".bin").stat().st_size < fp32.with_suffix(".bin").stat().st_size
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(images)
        got = OpenVINOEngine(model, fp16, threads=1)(images)
    for key, value in expected.items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(got[key], value, atol=5e-2, rtol=0)  # float16 weights
    with pytest.raises(InvalidValueError, match=r"an OpenVINO IR is a \.xml file"):
        exporter(model, tmp_path / "m.onnx", example=images)
    with pytest.raises(FileNotFoundError, match=r"missing\.xml: no such OpenVINO file"):
        OpenVINOEngine(model, tmp_path / "missing.xml")


def test_static_batch_runs_join_layer_major_outputs_on_their_batch_axis():
    """A DETR decoder's ``[layers, B, queries, C]`` output is joined over runs on its batch axis (axis 1), and
    a whole-batch run keeps every output as the graph gave it (3 layers, 2 images: nothing cut)."""
    from detforge.engines.exported import _join

    parts = [np.arange(3 * 2 * 4).reshape(3, 2, 4), np.arange(3 * 2 * 4).reshape(3, 2, 4) + 100]
    joined = _join(parts, step=2, total=3)
    assert joined.shape == (3, 3, 4)
    np.testing.assert_array_equal(joined[:, 2], parts[1][:, 0])
    assert _join([np.ones((2, 5)), np.zeros((2, 5))], step=2, total=3).shape == (3, 5)
