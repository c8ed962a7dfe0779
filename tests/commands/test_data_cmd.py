import json

import pytest
import yaml

from detforge.cli import main as cli_main
from detforge.commands.data import main


@pytest.mark.parametrize("fmt", ["coco", "voc", "yolo"])
def test_synth_writes_train_and_val(tmp_path, fmt, capsys):
    out = tmp_path / fmt
    argv = ["synth", "--out", str(out), "--format", fmt, "--num-images", "3", "--val-images", "2"]
    assert main(argv + ["--image-size", "40", "--num-classes", "3"]) == 0
    printed = capsys.readouterr().out
    assert "train: 3 images" in printed and "val: 2 images" in printed
    if fmt == "coco":
        train = json.loads((out / "annotations" / "instances_train.json").read_text())
        val = json.loads((out / "annotations" / "instances_val.json").read_text())
        assert len(train["images"]) == 3 and len(val["images"]) == 2
        assert [c["name"] for c in train["categories"]] == ["circle", "rectangle", "triangle"]
        assert {i["width"] for i in train["images"]} == {40}
    elif fmt == "voc":
        assert len((out / "ImageSets" / "Main" / "train.txt").read_text().split()) == 3
        assert len((out / "ImageSets" / "Main" / "val.txt").read_text().split()) == 2
        assert len(list((out / "Annotations").glob("*.xml"))) == 5  # the splits share the folder
    else:
        meta = yaml.safe_load((out / "data.yaml").read_text())
        assert meta["train"] == "images/train" and meta["val"] == "images/val"
        assert len(list((out / "images" / "val").iterdir())) == 2


def test_synth_through_the_cli_thermal_jpg(tmp_path):
    argv = [
        "data",
        "synth",
        "--out",
        str(tmp_path),
        "--format",
        "coco",
        "--num-images",
        "2",
        "--val-images",
        "0",
    ]
    assert cli_main(argv + ["--mode", "thermal", "--image-format", "jpg", "--image-size", "32"]) == 0
    assert sorted(p.suffix for p in (tmp_path / "train").iterdir()) == [".jpg", ".jpg"]
    assert not (tmp_path / "annotations" / "instances_val.json").exists()


def test_bad_arguments(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["synth", "--out", str(tmp_path), "--format", "pascal"])
    assert main(["synth", "--out", str(tmp_path), "--format", "coco", "--num-classes", "12"]) == 2
    assert "num_classes" in capsys.readouterr().err
    assert main([]) == 2
