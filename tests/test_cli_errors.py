"""User errors through ``detforge.cli.main``: one line ``detforge CMD: MESSAGE`` on stderr and exit status 2, no
traceback; with ``DETFORGE_DEBUG=1`` or ``--verbose`` the exception propagates. Nothing here trains: every case
fails while the command reads its arguments, checkpoint or data."""

from __future__ import annotations

import json
from pathlib import Path

import lightning
import pytest
import torch
from PIL import Image

from detforge.cli import main
from detforge.data.synthetic import SyntheticShapes
from detforge.data.writers import write_coco
from detforge.engine.validate import load_detector
from detforge.errors import DataError, InvalidValueError, MissingFileError, find_user_error
from detforge.models.detector import ObjectDetector


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_detector) -> dict[str, Path]:
    """A real (untrained) ObjectDetector checkpoint and its first 64 bytes, a folder with one image, a COCO
    data set and its annotation file cut in half, and paths that do not exist."""
    root = tmp_path_factory.mktemp("cli_errors")
    torch.manual_seed(0)
    model = tiny_detector()
    ckpt = {
        "state_dict": model.state_dict(),
        "hyper_parameters": dict(model.hparams),
        "pytorch-lightning_version": lightning.__version__,
    }
    torch.save(ckpt, root / "full.ckpt")
    (root / "truncated.ckpt").write_bytes((root / "full.ckpt").read_bytes()[:64])
    (root / "images").mkdir()
    Image.new("RGB", (32, 32)).save(root / "images" / "a.png")
    ann = write_coco(SyntheticShapes(2, 32, num_classes=3), root / "coco", split="train")
    text = ann.read_text()
    (root / "truncated.json").write_text(text[: len(text) // 2])
    return {
        "root": root,
        "ckpt": root / "full.ckpt",
        "truncated_ckpt": root / "truncated.ckpt",
        "images": root / "images",
        "coco_json": ann,
        "coco_images": root / "coco" / "train",
        "truncated_json": root / "truncated.json",
        "missing": root / "missing",
        "missing_ckpt": root / "missing.ckpt",
    }


def test_the_inputs_are_only_broken_where_meant(files):
    """The reference for the cases below: the whole checkpoint loads and the whole annotation file parses,
    so their cut copies fail for being cut."""
    assert isinstance(load_detector(files["ckpt"], "cpu"), ObjectDetector)
    assert len(json.loads(files["coco_json"].read_text())["images"]) == 2
    with pytest.raises(json.JSONDecodeError):
        json.loads(files["truncated_json"].read_text())


# (command, argv after the command with {name} for a path of `files`, words the message holds, the user error
# class found behind the exception that propagates with DETFORGE_DEBUG=1)
CASES = {
    "export truncated checkpoint": (
        "export",
        ["--ckpt", "{truncated_ckpt}"],
        ["{truncated_ckpt}", "not a detforge ObjectDetector checkpoint"],
        InvalidValueError,
    ),
    "predict missing folder": (
        "predict",
        ["{missing}", "--ckpt", "{ckpt}"],
        ["no images found for", "{missing}"],
        MissingFileError,
    ),
    "predict missing checkpoint": (
        "predict",
        ["{images}", "--ckpt", "{missing_ckpt}"],
        ["{missing_ckpt}: no such checkpoint file"],
        MissingFileError,
    ),
    "train unknown model": (
        "train",
        ["--model", "no_such_model", "--data", "synthetic:8", "--project", "{root}/runs"],
        ["unknown model 'no_such_model'"],
        InvalidValueError,
    ),
    "train unknown timm backbone": (
        "train",
        ["--model", "fcos_no_such_backbone", "--data", "synthetic:8", "--project", "{root}/runs"],
        ["unknown timm model 'no_such_backbone'"],
        InvalidValueError,
    ),
    "predict unknown weights tag": (
        "predict",
        ["{images}", "--model", "detforge_n", "--weights", "imagenet"],
        ["weights 'imagenet' for model 'detforge_n' are neither a registered tag"],
        MissingFileError,
    ),
    "train truncated coco json": (
        "train",
        ["--data", "coco:{truncated_json}:{coco_images}", "--project", "{root}/runs"],
        ["{truncated_json}: not valid JSON", "truncated"],
        DataError,
    ),
    "val missing checkpoint": (
        "val",
        ["--ckpt", "{missing_ckpt}"],
        ["{missing_ckpt}: no such checkpoint file"],
        MissingFileError,
    ),
    "val truncated checkpoint": (
        "val",
        ["--ckpt", "{truncated_ckpt}", "--data", "synthetic:4"],
        ["{truncated_ckpt}", "not a detforge ObjectDetector checkpoint"],
        InvalidValueError,
    ),
    "bench unknown device": (
        "bench",
        ["--device", "nonsense", "--model", "detforge_n"],
        ["--device 'nonsense'"],
        InvalidValueError,
    ),
}


def _fill(words: list[str], files: dict[str, Path]) -> list[str]:
    return [w.format(**{k: str(v) for k, v in files.items()}) for w in words]


@pytest.mark.parametrize("case", list(CASES))
def test_user_error_is_one_line_and_exit_2(case, files, capsys, monkeypatch):
    command, argv, words, error = CASES[case]
    argv, words = _fill(argv, files), _fill(words, files)
    monkeypatch.delenv("DETFORGE_DEBUG", raising=False)
    assert main([command, *argv]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"detforge {command}: "), err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0]
    assert "config.yaml" not in lines[0]  # `val --ckpt missing.ckpt` says the file is missing, nothing else
    assert not (files["root"] / "runs").exists()  # no run folder for a run that never started

    monkeypatch.setenv("DETFORGE_DEBUG", "1")
    with pytest.raises(Exception) as raised:  # the command's own exception, whatever wraps it
        main([command, *argv])
    assert isinstance(find_user_error(raised.value), error)


def test_verbose_anywhere_shows_the_traceback(files, monkeypatch):
    monkeypatch.delenv("DETFORGE_DEBUG", raising=False)
    with pytest.raises(MissingFileError, match="no such checkpoint file"):
        main(["val", "--verbose", "--ckpt", str(files["missing_ckpt"])])
    with pytest.raises(MissingFileError, match="no such checkpoint file"):
        main(["--verbose", "val", "--ckpt", str(files["missing_ckpt"])])
