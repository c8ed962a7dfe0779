"""benchmarks/edge_accuracy.py end to end on a tiny untrained Phantom checkpoint and WIDER FACE layout data."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from detforge.data.synthetic import SyntheticShapes
from detforge.data.writers import write_widerface

pytest.importorskip("onnxruntime")

SCRIPT = Path(__file__).resolve().parents[3] / "benchmarks" / "edge_accuracy.py"


def _script():
    spec = importlib.util.spec_from_file_location("edge_accuracy_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prints_three_backends_and_the_int8_drop(tmp_path, capsys, one_step_checkpoint):
    root = tmp_path / "wider"
    for split, seed, n in (("train", 0, 6), ("val", 1, 4)):
        faces = SyntheticShapes(n, image_size=64, num_classes=1, seed=seed, min_size=8, max_objects=3)
        write_widerface(faces, root, split=split)
    ckpt = one_step_checkpoint(tmp_path / "phantom.ckpt", "phantom", f"widerface:{root}")
    out_json = tmp_path / "rows.json"
    argv = [
        "--models",
        "phantom",
        "nexus",
        "--ckpt",
        f"phantom={ckpt}",
        "--data",
        f"phantom=widerface:{root}",
    ]
    argv += ["--calib", "3", "--threads", "1", "--out", str(tmp_path / "onnx"), "--json", str(out_json)]
    assert _script().main(argv) == 0

    printed = capsys.readouterr().out
    assert "nexus: skipped" in printed
    table = [line.split() for line in printed.splitlines() if line.startswith("phantom ")]
    assert [row[1] for row in table] == ["pytorch", "onnx_fp32", "onnx_int8"]
    assert all(0.0 <= float(row[2]) <= 100.0 and 0.0 <= float(row[3]) <= 100.0 for row in table)
    assert "phantom: INT8 drop (fp32 - int8)" in printed and "mAP points" in printed
    rows = json.loads(out_json.read_text())
    assert [r["backend"] for r in rows] == ["pytorch", "onnx_fp32", "onnx_int8"]
    assert rows[2]["size_bytes"] < rows[1]["size_bytes"]
    assert Path(rows[2]["path"]).is_file()
    assert abs(rows[0]["map"] - rows[1]["map"]) < 1e-3  # eager and ONNX float32 differ only by rounding
    assert torch.load(ckpt, weights_only=True)["hyper_parameters"]["model"] == "phantom"


def test_bad_pairs_are_a_clear_error():
    with pytest.raises(SystemExit, match="MODEL=VALUE"):
        _script().main(["--models", "phantom", "--ckpt", "phantom.ckpt"])
