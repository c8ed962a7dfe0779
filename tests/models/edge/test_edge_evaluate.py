"""detforge.models.edge.evaluate: ONNX outputs decoded by the model's own postprocess, and edge_accuracy end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detforge.models import create_model
from detforge.models.edge.evaluate import (
    BACKENDS,
    OrtDetectorNetwork,
    calibration_frames,
    edge_accuracy,
    evaluate_networks,
    graph_outputs_to_forward,
)
from detforge.models.edge.onnx import export_edge_onnx

pytest.importorskip("onnxruntime")

SIZE = 64


def _lenient(model, nms: bool = True):
    """Keep every candidate above a zero score, so an untrained model has many detections to compare; with
    ``nms=False`` keep overlapping ones too, all of them (an untrained model scores many cells almost alike,
    and NMS or a top-k cut would pick among near-ties differently under float32 rounding)."""
    model.score_thresh = 0.0
    if not nms:
        model.set_postprocess(nms_thresh=1.0, pre_nms_topk=100_000, max_detections_per_image=100_000)
    return model


def _assert_same_maps(got, expected, atol):
    assert set(expected) - {"p3"} <= set(got), (sorted(got), sorted(expected))
    for key in set(expected) - {"p3"}:
        exp = expected[key] if isinstance(expected[key], list) else [expected[key]]
        out = got[key] if isinstance(got[key], list) else [got[key]]
        assert len(out) == len(exp), key
        for g, e in zip(out, exp, strict=True):
            assert g.shape == e.shape, (key, g.shape, e.shape)
            torch.testing.assert_close(g, e, atol=atol, rtol=1e-4, msg=key)


def _assert_same_detections(got, expected, atol):
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert len(e["scores"]) > 0  # the comparison is not vacuous
        assert len(g["scores"]) == len(e["scores"])
        torch.testing.assert_close(g["scores"], e["scores"], atol=atol, rtol=0)
        torch.testing.assert_close(g["boxes"], e["boxes"], atol=50 * atol, rtol=0)
        assert torch.equal(g["labels"], e["labels"])


def _assert_matching_detections(got, expected, atol):
    """Order-free: nearly every detection of one list has a twin (box and score within ``atol``) in the other.
    Untrained models score many cells almost alike, so float32 rounding may swap near-ties (and NMS picks)."""
    for g, e in zip(got, expected, strict=True):
        assert len(e["scores"]) > 0 and abs(len(g["scores"]) - len(e["scores"])) <= 0.1 * len(e["scores"])
        for a, b in ((g, e), (e, g)):
            rows_a = torch.cat([a["boxes"], a["scores"][:, None]], 1)  # [K, 5]
            rows_b = torch.cat([b["boxes"], b["scores"][:, None]], 1)
            twin = torch.cdist(rows_a, rows_b, p=float("inf")).min(dim=1).values <= atol  # [K]
            assert twin.float().mean() >= 0.9, twin.float().mean()


@pytest.mark.parametrize("name", ["nightvision_edge", "nightvision_multi_domain"])
def test_nightvision_flat_outputs_invert_to_forward_maps(name):
    torch.manual_seed(0)
    model = _lenient(create_model(name, num_classes=3)).eval()
    images = torch.rand(2, 1, SIZE, 96)  # not square: the level sizes follow (h, w)
    with torch.no_grad():
        expected = model(images)
        raw = model.export_raw(**model.export_inputs(images))
        levels = graph_outputs_to_forward(model, raw, (SIZE, 96))
    _assert_same_maps(levels, expected, atol=1e-4)
    sizes = [(SIZE, 96), (40, 96)]  # the second image padded: boxes clip to its own size
    got, want = model.postprocess(levels, sizes), model.postprocess(expected, sizes)
    _assert_same_detections(got, want, atol=1e-5)
    assert [g.get("domain") for g in got] == [w.get("domain") for w in want]
    with pytest.raises(ValueError, match="same input size"):
        model.outputs_from_export(raw, (SIZE, SIZE))


def test_graph_outputs_to_forward_rejects_other_models():
    with pytest.raises(TypeError, match="not a detforge Detector"):
        graph_outputs_to_forward(torch.nn.Conv2d(1, 1, 1), {}, (SIZE, SIZE))


@pytest.mark.parametrize("name", ["phantom", "nexus", "nightvision_edge"])
def test_onnx_network_reproduces_forward_and_detections(name, tmp_path):
    torch.manual_seed(0)
    model = _lenient(create_model(name), nms=False).eval()
    path = export_edge_onnx(model, tmp_path / f"{name}.onnx", input_size=(SIZE, SIZE))
    network = OrtDetectorNetwork(model, path, threads=1)
    images = torch.rand(2, model.in_chans, SIZE, SIZE)  # a batch of two, run frame by frame
    with torch.no_grad():
        expected = model(images)
    got = network(images)
    _assert_same_maps(got, expected, atol=2e-4)
    sizes = [(SIZE, SIZE), (SIZE, SIZE - 16)]
    _assert_matching_detections(model.postprocess(got, sizes), model.postprocess(expected, sizes), atol=1e-3)

    # evaluate_networks: the same data through both networks gives the same COCO numbers
    targets = [
        {"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0]]), "labels": torch.zeros(1, dtype=torch.int64)},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    for t, (h, w) in zip(targets, sizes, strict=True):
        t["size"] = t["orig_size"] = torch.tensor([h, w])
    stats = evaluate_networks(model, {"pytorch": model, "onnx": network}, [(images, targets)])
    assert float(stats["pytorch"]["map"]) == pytest.approx(float(stats["onnx"]["map"]), abs=1e-3)


def test_calibration_frames_are_letterboxed_training_images():
    frames = calibration_frames("synthetic:10", SIZE, count=4, num_classes=1)
    assert len(frames) == 4
    assert all(f.shape == (1, 3, SIZE, SIZE) and f.dtype == np.float32 for f in frames)
    assert min(f.min() for f in frames) >= 0.0 and max(f.max() for f in frames) <= 1.0
    assert len(calibration_frames("synthetic:3", SIZE, count=32)) == 3


def test_edge_accuracy_rows_for_a_nightvision_checkpoint(tmp_path, one_step_checkpoint):
    ckpt = one_step_checkpoint(tmp_path / "nv.ckpt", "nightvision_edge", "synthetic-thermal:4", SIZE)
    rows = edge_accuracy(ckpt, "synthetic-thermal:4", tmp_path / "onnx", calibration_images=4, batch=16)
    assert [r.backend for r in rows] == list(BACKENDS)
    assert {r.model for r in rows} == {"nightvision_edge"}
    for row in rows:
        assert 0.0 <= row.map <= row.map_50 <= 1.0 or row.map_50 == 0.0
    eager, fp32, int8 = rows
    assert abs(eager.map - fp32.map) < 1e-3 and abs(eager.map_50 - fp32.map_50) < 1e-3
    assert int8.size_bytes < fp32.size_bytes and fp32.path.endswith("nightvision_edge.onnx")
    with pytest.raises(ValueError, match="classes"):
        edge_accuracy(ckpt, "synthetic-thermal:4", tmp_path / "onnx", dataset_kwargs={"num_classes": 2})
