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


def test_default_conf_is_the_checkpoints_f1_best_else_025_and_the_flag_wins(
    tiny_checkpoint, images, tmp_path, capsys
):
    """Without --conf: the checkpoint's F1-best confidence (``detforge_best_conf``), else 0.25 for a checkpoint
    without one; --conf wins. One log line says which, and the kept detections are those at or above it."""
    from detforge.models.detector import BEST_CONF_KEY

    def run(ckpt, *extra):
        out = tmp_path / f"out{len(list(tmp_path.iterdir()))}"
        argv = ["--ckpt", str(ckpt), str(images), "--out", str(out), "--device", "cpu", "--no-draw", *extra]
        assert main(argv) == 0
        scores = [
            d["score"] for r in json.loads((out / "predictions.json").read_text()) for d in r["detections"]
        ]
        return scores, capsys.readouterr().err

    everything, err = run(tiny_checkpoint, "--conf", "0")
    assert "detforge: conf 0: from --conf" in err
    distinct = sorted(set(everything))  # rounded to 4 decimals in the JSON
    best = distinct[len(distinct) // 2]
    # a raw score that rounds to ``best`` may lie on either side of it; the others are kept or not for sure
    at_least, at_most = sum(s > best for s in everything), sum(s >= best for s in everything)
    assert at_least > 0 and at_most < len(everything)

    checkpoint = torch.load(tiny_checkpoint, weights_only=True)
    checkpoint[BEST_CONF_KEY] = best
    torch.save(checkpoint, tmp_path / "best.ckpt")
    scores, err = run(tmp_path / "best.ckpt")
    assert f"detforge: conf {best:.4g}: the F1-best confidence of the checkpoint's validation" in err
    assert at_least <= len(scores) <= at_most and min(scores) >= best

    scores, err = run(tmp_path / "best.ckpt", "--conf", "0")  # the flag wins
    assert "conf 0: from --conf" in err and len(scores) == len(everything)

    del checkpoint[BEST_CONF_KEY]  # written before the key existed
    torch.save(checkpoint, tmp_path / "old.ckpt")
    scores, err = run(tmp_path / "old.ckpt")
    assert "detforge: conf 0.25: the default" in err
    assert len(scores) == sum(s >= 0.25 for s in everything)


def test_unreadable_images_are_skipped_named_and_counted(tiny_checkpoint, images, tmp_path, capsys):
    """An empty .jpg, a half-written .jpg and a text file named .jpg among good images: each is named on
    stderr and skipped, every other image is predicted and written, the summary counts them, exit 1."""
    good = (images / "b.jpg").read_bytes()
    (images / "empty.jpg").write_bytes(b"")
    (images / "half.jpg").write_bytes(good[: len(good) // 2])
    (images / "text.jpg").write_text("not a picture")
    out = tmp_path / "out"
    argv = ["--ckpt", str(tiny_checkpoint), str(images), "--out", str(out), "--device", "cpu", "--batch", "2"]
    assert main(argv) == 1
    records = json.loads((out / "predictions.json").read_text())
    assert [r["file"].split("imgs/")[1] for r in records] == ["a.png", "b.jpg", "sub/a.png"]
    captured = capsys.readouterr()
    for name in ("empty.jpg", "half.jpg", "text.jpg"):
        assert re.search(rf"skipped \S*{name}: ", captured.err), name
    assert "3 images" in captured.out and "3 skipped (unreadable)" in captured.out
