"""``detforge doctor``: exit codes, the printed report and the sample grid."""

from __future__ import annotations

import pytest
from PIL import Image

from detforge.cli import main as cli_main
from detforge.commands.doctor import main


def _coco(tmp_path, bad=False):
    import json

    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (40, 30), "gray").save(images / "a.png")
    bbox = [5, 5, 0, 10] if bad else [5, 5, 10, 10]
    data = {
        "images": [{"id": 1, "file_name": "a.png", "height": 30, "width": 40}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": bbox, "area": 100}],
        "categories": [{"id": 1, "name": "thing"}],
    }
    (tmp_path / "ann.json").write_text(json.dumps(data))
    return f"coco:{tmp_path / 'ann.json'}:{images}"


def test_clean_dataset_exits_0_and_writes_grid(tmp_path, capsys):
    assert main(["--data", _coco(tmp_path), "--out", str(tmp_path / "out"), "--plain"]) == 0
    out = capsys.readouterr().out
    assert "images: 1" in out and "verdict: OK" in out
    with Image.open(tmp_path / "out" / "doctor_grid.png") as grid:
        assert grid.size[0] > 0


def test_errors_exit_1_and_name_the_record(tmp_path, capsys):
    assert cli_main(["doctor", "--data", _coco(tmp_path, bad=True), "--out", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "degenerate_box" in out and "annotations[0]" in out and "1 error" in out


def test_unreadable_spec_exits_1(tmp_path, capsys):
    assert main(["--data", f"voc:{tmp_path / 'missing'}", "--out", str(tmp_path), "--plain"]) == 1
    assert "VOC folder not found" in capsys.readouterr().out


def test_bad_spec_exits_1_listing_forms(tmp_path, capsys):
    assert main(["--data", "nonsense:x", "--out", str(tmp_path), "--plain"]) == 1
    assert "accepted forms" in capsys.readouterr().out


def test_synthetic_default(tmp_path, capsys):
    pytest.importorskip("detforge.data.synthetic")
    assert (
        main(["--data", "synthetic:4", "--max-images", "0", "--grid", "2", "--out", str(tmp_path), "--plain"])
        == 0
    )
    assert "images: 4" in capsys.readouterr().out and (tmp_path / "doctor_grid.png").is_file()
