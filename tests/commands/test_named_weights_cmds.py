"""``--model NAME --weights W`` on every command: models, predict, val, export, bench and train (fine-tune).
The weights are conftest's ``named_weights`` (``test`` of ``detforge_n``, a local file, no network)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from detforge.data.synthetic import SyntheticShapes
from detforge.data.writers import write_coco
from detforge.models.registry import create_model


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = torch.Generator().manual_seed(0)
    for name, (h, w) in {"a.png": (48, 80), "b.png": (90, 60)}.items():
        pixels = torch.randint(0, 255, (h, w, 3), dtype=torch.uint8, generator=rng).numpy()
        Image.fromarray(pixels).save(folder / name)
    return folder


def test_models_lists_the_named_weights(named_weights, capsys):
    from detforge.commands.models import main

    assert main(["--weights", "detforge_n"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("detforge_n"))
    assert row.split()[:3] == ["detforge_n", "test", "test"] and "short side 96, long <= 160" in row
    assert row.rstrip().endswith("no")  # not cached yet


def test_predict_runs_the_weights_preprocessing_on_the_originals(named_weights, images, tmp_path):
    from detforge.commands.predict import main

    out = tmp_path / "out"
    argv = ["--model", "detforge_n", "--weights", "test", str(images), "--out", str(out), "--conf", "0.0"]
    assert main([*argv, "--device", "cpu", "--no-draw", "--no-fold-batchnorm"]) == 0
    records = json.loads((out / "predictions.json").read_text())
    model = create_model("detforge_n", weights="test").eval()
    batch = [torch.from_numpy(np.array(Image.open(r["file"]))).permute(2, 0, 1).float() / 255 for r in records]
    for record, expected in zip(records, model.predict(batch), strict=True):  # one batch, as predict ran it
        assert len(record["detections"]) == len(expected["boxes"]) > 0
        first = record["detections"][0]
        assert first["box"] == pytest.approx(expected["boxes"][0].tolist(), abs=0.01)
        assert first["class_name"] == ("cat", "dog", "bird")[int(expected["labels"][0])]


def test_predict_and_export_need_a_checkpoint_or_named_weights(named_weights, images, capsys):
    from detforge.commands.export import main as export
    from detforge.commands.predict import main as predict

    for main in (predict, export):
        with pytest.raises(SystemExit):
            main(["--weights", "test", str(images)] if main is predict else ["--weights", "test"])
        assert "--model NAME --weights W" in capsys.readouterr().err


def test_val_maps_the_weights_categories_to_the_data_sets(named_weights, tmp_path, capsys):
    """The weights' classes carry category ids 1, 3, 7; the COCO file has 1, 2, 3: 1 and 3 are scored as its
    labels 0 and 2, class 7 is left out."""
    from detforge.commands.val import main

    ann = write_coco(SyntheticShapes(4, (80, 100), num_classes=3, seed=3), tmp_path / "coco", split="val")
    spec = f"coco:{ann}:{tmp_path / 'coco' / 'val'}"
    out = tmp_path / "val"
    assert main(["--model", "detforge_n", "--weights", "test", "--data", spec, "--out", str(out)]) == 0
    results = json.loads((out / "predictions.json").read_text())
    assert results and {r["category_id"] for r in results} <= {1, 3}
    assert "Average Precision" in capsys.readouterr().out


def test_export_writes_the_named_weights(named_weights, tmp_path):
    pytest.importorskip("onnx")
    from detforge.commands.export import main

    out = tmp_path / "m.onnx"
    assert main(["--model", "detforge_n", "--weights", "test", "--out", str(out), "--imgsz", "64"]) == 0
    assert out.is_file()


def test_bench_times_the_named_weights(named_weights, capsys):
    from detforge.commands.bench import main

    argv = ["--model", "detforge_n", "--weights", "test", "--imgsz", "64", "--iters", "1", "--warmup", "0"]
    assert main([*argv, "--device", "cpu"]) == 0
    assert "detforge_n: batch 1 x 64x64" in capsys.readouterr().out


def test_train_fine_tunes_from_named_weights_with_their_recipe(named_weights, tmp_path, capsys, monkeypatch):
    """synthetic has 5 classes, the weights 3: the class layer starts anew, the rest is the weights'; the
    weights' recipe (SGD, lr 5e-3) is applied and logged; detforge's own finetune recipe is not."""
    from detforge.commands.train import main

    reference, _ = named_weights
    argv = [
        "--model=detforge_n",
        "--weights=test",
        "--data=synthetic:8",
        "--imgsz=64",
        "--batch=4",
        "--workers=0",
        "--trainer.max_steps=1",
        "--trainer.limit_val_batches=1",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--project={tmp_path}",
        "--name=ft",
    ]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "recipe: detforge_n from weights test: model.lr=0.005, model.optimizer=sgd" in err
    assert "recipe: finetune" not in err
    config = (tmp_path / "ft" / "config.yaml").read_text()
    assert "weights: test" in config and "optimizer: sgd" in config
    from detforge.engine.validate import load_detector
    from detforge.models.weights import cached_path

    cached_path(named_weights[1]).unlink()  # the checkpoint holds the weights: loading it fetches nothing
    monkeypatch.setenv("DETFORGE_OFFLINE", "1")
    loaded = load_detector(tmp_path / "ft" / "last.ckpt", "cpu")
    assert loaded.num_classes == 5 and loaded.model.num_classes == 5


def test_keep_classes_is_a_flag_and_reaches_the_model(named_weights):
    from detforge.commands.train import expand_aliases
    from detforge.models.detector import ObjectDetector

    assert expand_aliases(["--keep-classes", "--weights", "test"]) == [
        "--model.keep_classes=true",
        "--model.weights",
        "test",
    ]
    module = ObjectDetector(
        model="detforge_n", weights="test", num_classes=2, class_names=["bird", "fish"], keep_classes=True,
        compile_model=False, deterministic=False,
    )  # fmt: skip
    assert module.model.kept_classes == ["bird"]
