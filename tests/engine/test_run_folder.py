import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from detforge.engine.callbacks import (
    atomic_write,
    draw_ground_truth,
    draw_predictions,
    format_table,
    plot_curves,
    prediction_grid,
)
from detforge.engine.trainer import RunError, resolve_resume, resolve_run_dir, run_dir_for_ranks


@pytest.fixture(autouse=True)
def _single_process(monkeypatch):
    for key in ("LOCAL_RANK", "TORCHELASTIC_RUN_ID", "SLURM_NTASKS", "SLURM_JOB_ID", "DETFORGE_RUN_DIR"):
        monkeypatch.delenv(key, raising=False)


def test_run_dir_increments_unless_named_or_resuming(tmp_path):
    assert resolve_run_dir(tmp_path) == tmp_path / "exp"
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp2").mkdir()
    assert resolve_run_dir(tmp_path) == tmp_path / "exp3"
    assert resolve_run_dir(tmp_path, "exp", exist_ok=True) == tmp_path / "exp"
    assert resolve_run_dir(tmp_path, "mine") == tmp_path / "mine"


def test_ranks_share_the_launchers_run_dir(tmp_path, monkeypatch):
    with run_dir_for_ranks(tmp_path / "chosen"):
        assert os.environ["DETFORGE_RUN_DIR"] == str(tmp_path / "chosen")
        monkeypatch.setenv("LOCAL_RANK", "1")  # a rank started by Lightning's launcher
        assert resolve_run_dir(tmp_path, None) == tmp_path / "chosen"
    assert "DETFORGE_RUN_DIR" not in os.environ
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "abc")  # torchrun: every rank picks the same name
    (tmp_path / "exp-abc").mkdir()
    assert resolve_run_dir(tmp_path, None) == tmp_path / "exp-abc"


def test_resolve_resume(tmp_path):
    assert resolve_resume(None, tmp_path) is None
    with pytest.raises(FileNotFoundError, match="last"):
        resolve_resume("last", tmp_path)
    with pytest.raises(RunError, match="nothing to resume"):  # `detforge` prints it as one line
        resolve_resume("last", tmp_path)
    (tmp_path / "last.ckpt").write_bytes(b"x")
    assert resolve_resume("last", tmp_path) == str(tmp_path / "last.ckpt")
    assert resolve_resume(str(tmp_path), tmp_path / "other") == str(tmp_path / "last.ckpt")


def test_atomic_write_leaves_no_partial_file(tmp_path):
    path = tmp_path / "a.txt"
    atomic_write(path, lambda tmp: Path(tmp).write_text("ok"))
    assert path.read_text() == "ok" and oct(path.stat().st_mode & 0o077) != "0o0"

    def broken(tmp):
        Path(tmp).write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(path, broken)
    assert path.read_text() == "ok"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_plot_curves(tmp_path):
    csv = tmp_path / "metrics.csv"
    csv.write_text(
        "epoch,step,train/loss,val/loss,val/map,val/map_50\n0,9,2.0,,,\n0,19,1.5,,,\n0,19,,1.6,0.1,0.3\n1,39,1.0,1.2,0.3,0.6\n"
    )
    out = plot_curves(csv, tmp_path / "curves.png")
    assert Image.open(out).size[0] > 100
    (tmp_path / "empty.csv").write_text("epoch,step\n")
    assert plot_curves(tmp_path / "empty.csv", tmp_path / "none.png") is None


def test_prediction_grid_and_drawing():
    images = [torch.rand(3, 40, 50), torch.rand(1, 30, 30), torch.rand(3, 40, 50)]
    preds = [
        {
            "boxes": torch.tensor([[1.0, 2.0, 20.0, 30.0]]),
            "scores": torch.tensor([0.9]),
            "labels": torch.tensor([1]),
        },
        {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)},
        {
            "boxes": torch.tensor([[0.0, 0.0, 50.0, 40.0]]),
            "scores": torch.tensor([0.1]),
            "labels": torch.tensor([0]),
        },
    ]
    drawn = draw_predictions(images[0], preds[0], ["a", "b"])
    assert drawn.dtype == torch.uint8 and drawn.shape == (3, 40, 50)
    assert not torch.equal(drawn, (images[0] * 255).to(torch.uint8))  # a box was drawn
    below = draw_predictions(images[2], preds[2], score_thresh=0.3)
    assert torch.equal(below, (images[2] * 255).to(torch.uint8))  # low-score boxes are not
    grid = prediction_grid(images, preds, ["a", "b"])
    assert grid.dtype == torch.uint8 and grid.shape[0] == 3 and grid.shape[1] >= 80


def test_prediction_grid_draws_ground_truth_beside_predictions():
    """Each tile is [GT | predictions] of one image: the GT panel has the target's box drawn (with no score
    threshold), the predictions panel only the detections; grid shape from make_grid's tiling."""
    images = [torch.full((3, 40, 50), 0.5), torch.full((3, 40, 50), 0.5)]
    no_preds = {
        "boxes": torch.zeros(0, 4),
        "scores": torch.zeros(0),
        "labels": torch.zeros(0, dtype=torch.long),
    }
    targets = [
        {"boxes": torch.tensor([[5.0, 5.0, 30.0, 30.0]]), "labels": torch.tensor([0])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
    ]
    grid = prediction_grid(images, [no_preds, no_preds], ["a"], targets=targets, gap=4)
    tile_w, tile_h = 50 + 4 + 50, 40
    assert grid.shape == (3, 4 + tile_h + 4, 4 + 2 * (tile_w + 4))  # 2 tiles in a row, make_grid padding 4
    tile = grid[:, 4 : 4 + tile_h, 4 : 4 + tile_w]
    plain = torch.full((3, 40, 50), 127, dtype=torch.uint8)
    assert not torch.equal(tile[:, :, :50], plain)  # the GT box is drawn on the left panel
    assert torch.equal(tile[:, :, 50:54], torch.full((3, 40, 4), 255, dtype=torch.uint8))  # white gap
    assert torch.equal(tile[:, :, 54:], plain)  # no detections on the right panel
    second = grid[:, 4 : 4 + tile_h, 4 + tile_w + 4 : 4 + 2 * tile_w + 4]
    assert torch.equal(second[:, :, :50], plain)  # an image without objects: an empty GT panel
    gt = draw_ground_truth(images[0], targets[0], ["a"])
    assert torch.equal(gt, tile[:, :, :50])


def test_format_table_matches_pycocotools_layout():
    stats = {k: torch.tensor(0.5) for k in ("map", "map_50", "map_75", "mar_100")}
    stats["map_per_class"] = torch.tensor([0.25, 0.75])
    stats["classes"] = torch.tensor([0, 1])
    text = format_table(stats, ["cat", "dog"])
    lines = text.splitlines()
    assert lines[0].startswith(
        " Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 0.500"
    )
    assert any("dog" in line and "0.750" in line for line in lines)


def test_training_run_writes_f1_curve_confusion_matrix_and_keeps_best_conf(tmp_path, tiny_detector):
    """A tiny fit with validation: ``confusion_matrix.png``, ``f1_curve.png`` and the ``results.json`` keys
    (every validation object is in its class's row), the F1-best confidence on the module and in its
    checkpoint, restored on load; a checkpoint written before the key existed loads with None."""
    import json

    import lightning as L
    import numpy as np
    from torch.utils.data import DataLoader

    from detforge.data.datamodule import detection_collate
    from detforge.data.synthetic import SyntheticShapes
    from detforge.engine.callbacks import RunArtifacts
    from detforge.engine.validate import load_detector
    from detforge.models.detector import BEST_CONF_KEY

    names = ["circle", "rectangle", "triangle"]
    model = tiny_detector(score_thresh=0.0, class_names=names)
    train = SyntheticShapes(4, 64, num_classes=3)
    val = SyntheticShapes(4, 64, num_classes=3, seed=1)
    loaders = [DataLoader(d, batch_size=2, collate_fn=detection_collate) for d in (train, val)]
    trainer = L.Trainer(
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[RunArtifacts(tmp_path, num_images=0, print_table=False)],
    )
    trainer.fit(model, *loaders)

    for name in ("confusion_matrix.png", "f1_curve.png", "results.json"):
        assert (tmp_path / name).is_file(), name
        assert name.endswith(".json") or Image.open(tmp_path / name).size[0] > 300
    assert not list(tmp_path.glob(".*")), "temporary files left behind"
    results = json.loads((tmp_path / "results.json").read_text())
    summary = model.last_val_stats["detection_summary"]
    assert results["class_names"] == names
    assert results["best_conf"] == model.best_conf == summary.f1.best_conf
    assert results["f1"] == summary.f1.best_f1 and results["confusion_conf"] == summary.confusion_conf
    matrix = np.array(results["confusion_matrix"])
    objects = np.bincount(torch.cat([val[i][1]["labels"] for i in range(len(val))]).numpy(), minlength=3)
    assert matrix.shape == (4, 4) and matrix[:3].sum(axis=1).tolist() == objects.tolist()
    assert 0.0 <= results["map"] <= 1.0  # the scalar stats are still there

    for best in (model.best_conf, 0.3125):  # the fit's own (None without a true positive) and a set value
        model.best_conf = best
        path = tmp_path / "run.ckpt"
        trainer.save_checkpoint(path)
        assert torch.load(path, weights_only=True)[BEST_CONF_KEY] == best
        assert load_detector(path, "cpu").best_conf == best
    old = torch.load(path, weights_only=True)
    del old[BEST_CONF_KEY]
    torch.save(old, tmp_path / "old.ckpt")
    assert load_detector(tmp_path / "old.ckpt", "cpu").best_conf is None
