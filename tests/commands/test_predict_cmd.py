import json
import re

import pytest
import torch
from PIL import Image

from detforge.boxes import scale_boxes
from detforge.commands.predict import collect_images, main
from detforge.data.transforms import build_val_transforms
from detforge.engine.validate import load_detector


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    rng = torch.Generator().manual_seed(0)
    sizes = {"a.png": (48, 80), "b.jpg": (90, 60), "sub/a.png": (64, 64)}
    for name, (h, w) in sizes.items():
        pixels = torch.randint(0, 255, (h, w, 3), dtype=torch.uint8, generator=rng).numpy()
        Image.fromarray(pixels).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_collect_images_files_folders_globs(images):
    assert [p.name for p in collect_images([str(images)])] == ["a.png", "b.jpg", "a.png"]
    assert [p.name for p in collect_images([str(images / "*.png")])] == ["a.png"]
    both = collect_images([str(images / "a.png"), str(images / "*.png")])  # duplicates removed
    assert len(both) == 1
    with pytest.raises(FileNotFoundError, match="no images"):
        collect_images([str(images / "*.gif")])


def test_predict_writes_drawings_and_json_in_original_pixels(tiny_checkpoint, images, tmp_path, capsys):
    out = tmp_path / "out"
    assert (
        main(
            [
                "--ckpt",
                str(tiny_checkpoint),
                str(images),
                "--out",
                str(out),
                "--conf",
                "0.0",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    records = json.loads((out / "predictions.json").read_text())
    assert [r["file"].split("imgs/")[1] for r in records] == ["a.png", "b.jpg", "sub/a.png"]
    for name in ("a.png", "b.png", "a_2.png"):
        assert (out / name).is_file(), name
    assert Image.open(out / "b.png").size == (60, 90)  # drawn on the original image
    captured = capsys.readouterr()
    assert "3 images" in captured.out
    # the inference memory format is chosen (fixed to channels-last in tests), the head's too
    assert "detforge: memory format channels_last" in captured.err
    assert "detforge: head memory format channels_last" in captured.err
    # BatchNorm folded into the convolutions (the boxes below still equal the unfolded model's)
    folded = re.search(r"detforge: (\d+) BatchNorm layers folded", captured.err)
    assert folded and int(folded.group(1)) > 0

    # boxes equal the model's own detections on the letterboxed input, scaled back to the file's size
    model = load_detector(tiny_checkpoint, "cpu")
    raw = torch.as_tensor(__import__("numpy").array(Image.open(images / "a.png"))).permute(2, 0, 1)
    image, target = build_val_transforms(64)(
        raw, {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0).long()}
    )
    size = tuple(int(v) for v in target["size"])
    pred = model.predict(image[None], [size])[0]
    expected = scale_boxes(pred["boxes"], size, (48, 80))
    got = torch.tensor([d["box"] for d in records[0]["detections"]])
    assert got.shape == expected.shape and len(got) > 0
    torch.testing.assert_close(got, expected, atol=0.01, rtol=0)
    assert all(
        0 <= d["box"][0] <= d["box"][2] <= 80 and 0 <= d["box"][1] <= d["box"][3] <= 48
        for d in records[0]["detections"]
    )
    assert {d["class_name"] for d in records[0]["detections"]} <= {"circle", "rectangle", "triangle"}
