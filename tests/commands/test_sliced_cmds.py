"""``detforge predict --slice`` and ``detforge val --slice``: sliced inference from the command line."""

import json

import numpy as np
import torch
from PIL import Image

from detforge.commands import predict, val
from detforge.engine.validate import load_detector
from detforge.slicing import sliced_predict, tile_windows


def test_predict_slice_writes_the_sliced_detections_in_original_pixels(tiny_checkpoint, tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    pixels = torch.randint(0, 255, (100, 150, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    Image.fromarray(pixels.numpy()).save(folder / "big.png")
    out = tmp_path / "out"
    argv = ["--ckpt", str(tiny_checkpoint), str(folder), "--out", str(out), "--conf", "0.0", "--device", "cpu"]
    argv += ["--no-draw", "--slice", "64", "--overlap", "0.25", "--merge", "nmm", "--batch", "4"]
    assert predict.main(argv) == 0
    assert "1 images" in capsys.readouterr().out
    got = json.loads((out / "predictions.json").read_text())[0]["detections"]
    model = load_detector(tiny_checkpoint, "cpu")
    image = torch.as_tensor(np.array(Image.open(folder / "big.png"))).permute(2, 0, 1).float() / 255
    expected = sliced_predict(model, image, 64, 0.25, batch_size=4, merge="nmm")[0]
    assert len(got) == len(expected["boxes"]) > 0
    torch.testing.assert_close(torch.tensor([d["box"] for d in got]), expected["boxes"], atol=0.01, rtol=0)
    boxes = torch.tensor([d["box"] for d in got])
    assert (boxes[:, 2] <= 150).all() and (boxes[:, 3] <= 100).all()
    assert len(tile_windows(100, 150, 64, 0.25)) == 6


def test_val_slice_evaluates_the_full_images(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "val"
    argv = ["--ckpt", str(tiny_checkpoint), "--data", "synthetic:4", "--batch", "2", "--out", str(out)]
    argv += ["--dataset-kwargs", '{"num_classes": 3}']
    assert val.main([*argv, "--slice", "48", "--overlap", "0.2", "--full-image"]) == 0
    printed = capsys.readouterr().out
    assert "Average Precision" in printed
    results = json.loads((out / "predictions.json").read_text())
    assert results and {"image_id", "bbox", "score", "category_id"} <= set(results[0])
