"""`detforge train --model phantom` end to end on WIDER FACE layout data written by ``write_widerface``."""

from __future__ import annotations

import csv
import json

import torch
import yaml

from detforge.commands.train import main
from detforge.data.synthetic import SyntheticShapes
from detforge.data.writers import write_widerface

QUIET = [
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--workers=0",
    "--model.warmup_steps=2",
]


def _faces(n: int, seed: int) -> SyntheticShapes:
    # one shape class (the "faces"), a few per image, a third of the images without any
    return SyntheticShapes(n, image_size=128, num_classes=1, seed=seed, max_objects=4, empty_fraction=0.3)


def test_phantom_trains_and_validates_on_widerface_layout(tmp_path, capsys):
    root = tmp_path / "wider"
    train, val = _faces(16, seed=0), _faces(8, seed=1)
    counts = [len(train[i][1]["boxes"]) for i in range(len(train))]
    assert 0 in counts and max(counts) > 1
    write_widerface(train, root, split="train")
    write_widerface(val, root, split="val")
    assert (
        "\n0\n0 0 0 0 0 0 0 0 0 0\n"
        in (root / "wider_face_split" / "wider_face_train_bbx_gt.txt").read_text()
    )

    project = tmp_path / "runs"
    argv = ["--model", "phantom", "--data", f"widerface:{root}", "--epochs", "1", "--imgsz", "128"]
    argv += [
        "--batch",
        "4",
        "--trainer.limit_train_batches=3",
        f"--project={project}",
        "--name=phantom",
        *QUIET,
    ]
    assert main(argv) == 0

    run = project / "phantom"
    for name in ("config.yaml", "last.ckpt", "best.ckpt", "metrics.csv", "results.json"):
        assert (run / name).is_file(), name
    ckpt = torch.load(run / "last.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"]["num_classes"] == 1
    assert ckpt["hyper_parameters"]["class_names"] == ["face"]
    assert ckpt["global_step"] == 3
    assert any(
        k.startswith("model.net.") for k in ckpt["state_dict"]
    )  # Phantom's network, not a default model
    with open(run / "metrics.csv", newline="") as f:
        maps = [float(row["val/map"]) for row in csv.DictReader(f) if row.get("val/map")]
    assert len(maps) == 1 and 0.0 <= maps[0] <= 1.0
    assert json.loads((run / "results.json").read_text())["map"] == maps[0]
    assert "IoU=0.50:0.95" in capsys.readouterr().out
    # the synthetic-only part of the default recipe does not follow the user's own data; options given do
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert not config["data"]["dataset_kwargs"]
    assert config["data"]["photometric"] is True
    assert config["data"]["imgsz"] == 128 and ckpt["hyper_parameters"]["imgsz"] == 128


def test_max_steps_still_ends_with_a_validation(tmp_path):
    root = tmp_path / "wider"
    write_widerface(_faces(8, seed=0), root, split="train")
    write_widerface(_faces(4, seed=1), root, split="val")
    project = tmp_path / "runs"
    argv = [
        "--model",
        "phantom",
        "--data",
        f"widerface:{root}",
        "--epochs",
        "5",
        "--imgsz",
        "64",
        "--batch",
        "4",
    ]
    argv += [
        "--trainer.max_steps=3",
        "--trainer.check_val_every_n_epoch=5",
        f"--project={project}",
        "--name=r",
    ]
    assert main(argv + QUIET) == 0
    assert torch.load(project / "r" / "last.ckpt", weights_only=True)["global_step"] == 3
    with open(project / "r" / "metrics.csv", newline="") as f:
        assert [row["val/map"] for row in csv.DictReader(f) if row.get("val/map")]
