"""``--engine torch|onnxruntime`` on ``predict``, ``val`` and ``bench`` through ``detforge.cli.main``: the same
detections and COCO numbers from onnxruntime as from eager PyTorch, the checkpoint's export cached beside it."""

import json
import os
import shutil

import pytest
import torch
from PIL import Image

import detforge.engine.validate as validate_module
import detforge.engines as engines_module
import detforge.engines.pipeline as pipeline_module
from detforge.cli import main as cli_main

pytest.importorskip("onnxruntime")


@pytest.fixture
def ckpt(tiny_checkpoint, tmp_path):
    """A copy of the tiny checkpoint: the onnxruntime engine writes its cached export beside it."""
    return shutil.copy(tiny_checkpoint, tmp_path / "tiny.ckpt")


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = torch.Generator().manual_seed(0)
    for name, (h, w) in {"a.png": (48, 80), "b.png": (90, 60), "c.png": (64, 64)}.items():
        pixels = torch.randint(0, 255, (h, w, 3), dtype=torch.uint8, generator=rng).numpy()
        Image.fromarray(pixels).save(folder / name)
    return folder


@pytest.fixture
def recorded(monkeypatch):
    """Every batch's detections (input pixels, before rounding) as ``engine_detections`` returns them."""
    batches = []
    inner = engines_module.engine_detections

    def record(engine, model, images, sizes):
        out = inner(engine, model, images, sizes)
        batches.append((engine.name, [{k: v.clone() for k, v in d.items()} for d in out]))
        return out

    monkeypatch.setattr(engines_module, "engine_detections", record)  # val's path
    monkeypatch.setattr(pipeline_module, "engine_detections", record)  # predict's and track's path
    return batches


def _same_detections(got, expected):
    assert len(got) == len(expected) > 0
    for g, e in zip(got, expected, strict=True):
        assert len(e["boxes"]) > 0 and torch.equal(g["labels"], e["labels"]), "labels or their order differ"
        torch.testing.assert_close(g["boxes"], e["boxes"], atol=1e-3, rtol=0)
        torch.testing.assert_close(g["scores"], e["scores"], atol=1e-4, rtol=0)


def _predict(argv, out):
    assert cli_main(["predict", *argv, "--out", str(out), "--conf", "0", "--no-draw", "--device", "cpu"]) == 0
    return json.loads((out / "predictions.json").read_text())


def _same_json(got, expected):
    """predictions.json rounds boxes to 0.01 px: equal up to that rounding, labels in the same order."""
    for g, e in zip(got, expected, strict=True):
        assert [d["label"] for d in g["detections"]] == [d["label"] for d in e["detections"]]
        for dg, de in zip(g["detections"], e["detections"], strict=True):
            assert max(abs(a - b) for a, b in zip(dg["box"], de["box"], strict=True)) <= 0.01 + 1e-3


def test_predict_onnxruntime_equals_torch_and_reuses_the_cached_export(
    ckpt, images, tmp_path, recorded, capsys
):
    torch_json = _predict(["--ckpt", str(ckpt), str(images)], tmp_path / "torch")
    ort_json = _predict(["--ckpt", str(ckpt), str(images), "--engine", "onnxruntime"], tmp_path / "ort")
    cache = ckpt.with_name("tiny.64.onnx")
    assert f"exported {ckpt} to {cache}" in capsys.readouterr().err
    (_, expected), (name, got) = recorded
    assert name == "onnxruntime"
    _same_detections(got, expected)
    _same_json(ort_json, torch_json)

    stamp = cache.stat().st_mtime_ns  # a second call reuses the file while it is newer than the checkpoint
    _predict(["--ckpt", str(ckpt), str(images), "--engine", "onnxruntime"], tmp_path / "ort2")
    assert "cached export, newer than the checkpoint" in capsys.readouterr().err
    assert cache.stat().st_mtime_ns == stamp
    later = cache.stat().st_mtime + 10  # a newer checkpoint: exported again
    os.utime(ckpt, (later, later))
    _predict(["--ckpt", str(ckpt), str(images), "--engine", "onnxruntime"], tmp_path / "ort3")
    assert f"exported {ckpt}" in capsys.readouterr().err and cache.stat().st_mtime_ns != stamp


def test_predict_exported_files_with_and_without_nms(ckpt, images, tmp_path, recorded):
    """``--weights FILE.onnx``: the file alone (its metadata rebuilds the rest), raw heads or NMS in the graph."""
    torch_json = _predict(["--ckpt", str(ckpt), str(images)], tmp_path / "torch")
    raw, nms = tmp_path / "raw.onnx", tmp_path / "nms.onnx"
    assert cli_main(["export", "--ckpt", str(ckpt), "--out", str(raw), "--dynamic"]) == 0
    assert cli_main(["export", "--ckpt", str(ckpt), "--out", str(nms), "--nms"]) == 0  # static batch 1
    ckpt.unlink()  # the files need no checkpoint
    for path in (raw, nms):
        got_json = _predict(
            ["--weights", str(path), "--engine", "onnxruntime", str(images)], tmp_path / path.stem
        )
        _same_json(got_json, torch_json)
    (_, expected), (_, from_raw), (_, from_nms) = recorded
    _same_detections(from_raw, expected)
    _same_detections(from_nms, expected)


def test_val_onnxruntime_equals_torch(ckpt, tmp_path, recorded, monkeypatch):
    results = []
    inner = validate_module.validate_checkpoint
    monkeypatch.setattr(validate_module, "validate_checkpoint", lambda **kw: results.append(inner(**kw)) or 0)
    argv = ["val", "--ckpt", str(ckpt), "--data", "synthetic:4", "--imgsz", "64", "--batch", "4"]
    argv += ["--dataset-kwargs", '{"num_classes": 3}', "--device", "cpu"]
    for engine in ("torch", "onnxruntime"):
        assert cli_main([*argv, "--engine", engine, "--out", str(tmp_path / engine)]) == 0
    torch_stats, ort_stats = results
    keys = [k for k, v in torch_stats.items() if k.startswith(("map", "mar")) and torch.is_tensor(v)]
    assert "map" in keys and "map_50" in keys
    for key in keys:
        torch.testing.assert_close(ort_stats[key], torch_stats[key], atol=1e-4, rtol=0, msg=key)
    engines = [name for name, _ in recorded]
    half = engines.index("onnxruntime")
    assert set(engines[:half]) == {"torch"} and set(engines[half:]) == {"onnxruntime"}
    for (_, expected), (_, got) in zip(recorded[:half], recorded[half:], strict=True):
        _same_detections(got, expected)


def test_bench_prints_one_row_per_engine(ckpt, capsys):
    argv = ["bench", "--ckpt", str(ckpt), "--imgsz", "64", "--iters", "1", "--warmup", "0", "--device", "cpu"]
    assert cli_main([*argv, "--engine", "torch,onnxruntime"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if "ms/image" in line]
    assert [row.split(":")[0] for row in rows] == ["torch", "onnxruntime"]
    assert all("images/s" in row and f"{ckpt}: batch 1 x 64x64" in row for row in rows)


def test_engine_errors_are_one_line(ckpt, images, tmp_path, capsys):
    assert cli_main(["predict", "--ckpt", str(ckpt), str(images), "--engine", "tensorrt"]) == 2
    assert "unknown engine; engines: torch, onnxruntime" in capsys.readouterr().err
    assert (
        cli_main(["predict", "--weights", str(tmp_path / "no.onnx"), "--engine", "onnxruntime", str(images)])
        == 2
    )
    assert "no.onnx: no such ONNX file" in capsys.readouterr().err
