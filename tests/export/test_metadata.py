"""An exported file carries what rebuilds detforge's pre- and post-processing (``detforge.export.metadata``)."""

import json
from dataclasses import asdict

import pytest

from detforge.cli import main as cli_main
from detforge.engine.validate import load_detector
from detforge.errors import InvalidValueError
from detforge.export import detector_from_metadata, export_onnx, read_metadata

pytest.importorskip("onnxruntime")


def test_exported_file_rebuilds_the_detector_settings(tiny_checkpoint, tmp_path):
    out = tmp_path / "tiny.onnx"
    assert cli_main(["export", "--ckpt", str(tiny_checkpoint), "--out", str(out)]) == 0
    meta = read_metadata(out)
    assert meta["detforge.source"] == str(tiny_checkpoint) and meta["detforge.nms"] == "0"
    assert meta["detforge.input_size"] == "64,64"
    original = load_detector(tiny_checkpoint, "cpu")
    rebuilt = detector_from_metadata(out)
    assert rebuilt.class_names == original.class_names == ["circle", "rectangle", "triangle"]
    assert rebuilt.model.postprocess_settings == original.model.postprocess_settings
    assert type(rebuilt.model) is type(original.model) and rebuilt.hparams.imgsz == 64
    assert rebuilt.best_conf == original.best_conf
    assert json.loads(meta["detforge.postprocess"]) == asdict(original.model.postprocess_settings)


def test_file_without_metadata_is_a_clear_error(tiny_detector, tmp_path):
    path = export_onnx(tiny_detector().model, tmp_path / "bare.onnx", image_size=(64, 64))
    with pytest.raises(InvalidValueError, match=r"bare\.onnx: no detforge metadata"):
        detector_from_metadata(path)
