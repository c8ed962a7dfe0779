"""The export format registry: built-in formats, a clear error for an unknown one, and ``detforge export``
looking the format up instead of switching on it."""

from pathlib import Path

import pytest
import torch

from detforge.cli import main as cli_main
from detforge.errors import InvalidValueError
from detforge.export import get_exporter, list_formats, register_exporter
from detforge.export import registry as registry_module


def test_builtin_formats_are_listed():
    assert list_formats()[:2] == ("onnx", "int8")
    for name in ("onnx", "int8"):
        assert get_exporter(name).__name__ == f"export_{name}_format"


def test_unknown_format_is_an_error_naming_the_known_ones(tiny_checkpoint, capsys):
    with pytest.raises(InvalidValueError, match=r"'tflite'.*known formats: onnx, int8"):
        get_exporter("tflite")
    assert cli_main(["export", "--ckpt", str(tiny_checkpoint), "--format", "tflite"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tflite" in err[0] and "onnx, int8" in err[0]


def test_export_command_runs_a_registered_format(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    """A newly registered format is found by name, with the command's typed keywords and the metadata."""
    monkeypatch.setattr(registry_module, "_EXPORTERS", dict(registry_module._EXPORTERS))
    calls = []

    @register_exporter("text")
    def export_text(
        model, out_path, *, example, nms=False, dynamic=False, opset=17, calib_data=None, metadata=None
    ):
        calls.append(dict(example=example, nms=nms, dynamic=dynamic, opset=opset, metadata=metadata))
        Path(out_path).write_text(type(model).__name__)
        return Path(out_path)

    assert "text" in list_formats()
    out = tmp_path / "model.txt"
    argv = ["export", "--ckpt", str(tiny_checkpoint), "--format", "text", "--out", str(out), "--nms"]
    assert cli_main([*argv, "--opset", "13", "--batch", "2"]) == 0
    assert out.read_text() == "FCOS" and f"TEXT: {out}" in capsys.readouterr().out
    (call,) = calls
    assert call["example"].shape == torch.Size([2, 3, 64, 64]) and call["nms"] and call["opset"] == 13
    assert not call["dynamic"] and call["metadata"]["detforge.nms"] == "1"
    with pytest.raises(ValueError, match="already registered"):
        register_exporter("text")(lambda *a, **k: None)
