"""`detforge data synth --format widerface`: a WIDER FACE tree that `--data widerface:DIR` reads back."""

from __future__ import annotations

import warnings

from detforge.commands.data import main
from detforge.data.spec import build_dataset


def test_synth_widerface_train_and_val(tmp_path, capsys):
    argv = [
        "synth",
        "--out",
        str(tmp_path),
        "--format",
        "widerface",
        "--num-images",
        "4",
        "--val-images",
        "2",
    ]
    assert main(argv + ["--image-size", "48"]) == 0
    assert "train: 4 images" in capsys.readouterr().out
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one class by default: no "written as faces" warning, no reader issue
        train = build_dataset(f"widerface:{tmp_path}", split="train")
        val = build_dataset(f"widerface:{tmp_path}", split="val")
    assert len(train) == 4 and len(val) == 2 and train.class_names == ["face"]
    assert (tmp_path / "WIDER_val" / "images" / "0--Synthetic").is_dir()


def test_synth_widerface_sequence_frames(tmp_path):
    argv = ["synth", "--out", str(tmp_path), "--format", "widerface", "--mode", "sequence"]
    assert main(argv + ["--num-images", "3", "--val-images", "0", "--image-size", "48"]) == 0
    assert [p.name for p in (tmp_path / "WIDER_train" / "images").iterdir()] == ["0--Sequence"]
