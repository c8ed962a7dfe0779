"""`detforge val --gt --pred`: the table, per-class AP, JSON output, plots and clear errors."""

from __future__ import annotations

import json

import pytest

from detforge.cli import main as cli_main
from detforge.commands import val


@pytest.fixture
def coco_files(tmp_path):
    gt = {
        "images": [{"id": 1, "width": 100, "height": 100}, {"id": 2, "width": 100, "height": 100}],
        "categories": [{"id": 5, "name": "person"}, {"id": 9, "name": "kite"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 5, "bbox": [0, 0, 40, 40], "area": 1600, "iscrowd": 0},
            {"id": 2, "image_id": 2, "category_id": 9, "bbox": [10, 10, 20, 20], "area": 400, "iscrowd": 0},
        ],
    }
    results = [
        {"image_id": 1, "category_id": 5, "bbox": [0, 0, 40, 40], "score": 0.9},
        {"image_id": 2, "category_id": 9, "bbox": [60, 60, 20, 20], "score": 0.8},
    ]
    gt_path, pred_path = tmp_path / "gt.json", tmp_path / "pred.json"
    gt_path.write_text(json.dumps(gt))
    pred_path.write_text(json.dumps(results))
    return gt_path, pred_path


def test_prints_table_and_per_class_ap(coco_files, tmp_path, capsys) -> None:
    gt_path, pred_path = coco_files
    out_json = tmp_path / "m.json"
    plots = tmp_path / "plots"
    rc = cli_main(
        [
            "val",
            "--gt",
            str(gt_path),
            "--pred",
            str(pred_path),
            "--save-json",
            str(out_json),
            "--plots",
            str(plots),
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert " Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 0.500" in out
    assert "person" in out and "1.000" in out and "kite" in out
    saved = json.loads(out_json.read_text())
    assert saved["stats"]["map"] == pytest.approx(0.5)
    assert saved["per_class_ap"] == {"5": pytest.approx(1.0), "9": 0.0}
    assert (plots / "pr_curve.png").is_file() and (plots / "confusion_matrix.png").is_file()


def test_errors_name_the_file(coco_files, tmp_path, capsys) -> None:
    gt_path, _ = coco_files
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"image_id": 77, "category_id": 5, "bbox": [0, 0, 1, 1], "score": 0.5}]))
    assert cli_main(["val", "--gt", str(gt_path), "--pred", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("detforge val: ") and "bad.json" in err and "image_id 77" in err
    assert cli_main(["val", "--gt", str(tmp_path / "missing.json"), "--pred", str(bad)]) == 2
    assert "missing.json: no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        val.main(["--gt", str(gt_path)])  # --pred is required with --gt


def test_checkpoint_path_without_engine_is_a_clear_error(monkeypatch, capsys) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "detforge.engine.validate", None)  # import fails as if not built
    assert val.main(["--ckpt", "x.ckpt", "--data", "synthetic:4"]) == 2
    assert "not available" in capsys.readouterr().err


def test_checkpoint_of_a_default_run_before_format_2_prints_the_same_table(tmp_path, capsys) -> None:
    """`detforge val --ckpt runs/.../best.ckpt` of a default run written before checkpoint format 2: the model
    gets the settings it had (detforge_n's NMS 0.6, not ObjectDetector's old 0.5), so the table is the one
    of the same weights in a current checkpoint."""
    import lightning
    import torch

    from detforge.models.detector import ObjectDetector

    current = ObjectDetector(
        model="detforge_n",
        num_classes=5,
        score_thresh=0.0,
        imgsz=64,
        compile_model=False,
        deterministic=False,
    )
    v1 = {  # the hyper-parameters `detforge train` saved then (model options at ObjectDetector's old defaults)
        **dict(fpn_channels=256, head_num_convs=4, focal_alpha=0.25, focal_gamma=2.0, cls_loss_weight=1.0),
        **dict(reg_loss_weight=1.0, centerness_loss_weight=1.0, nms_thresh=0.5, max_detections_per_image=100),
        **dict(backbone=None, detection_arch="fcos", strides=[8, 16, 32, 64, 128], regress_ranges=None),
        **dict(
            model="detforge_n", num_classes=5, imgsz=64, in_chans=3, compile_model=False, deterministic=False
        ),
        **dict(score_thresh=0.0, _instantiator="lightning.pytorch.cli.instantiate_module"),
    }
    runs = {}
    for name, hparams in (("v1", v1), ("v2", dict(current.hparams))):
        run = tmp_path / name
        run.mkdir()
        (run / "config.yaml").write_text("data:\n  data: synthetic:8\n")
        torch.save(
            {
                "state_dict": current.state_dict(),
                "hyper_parameters": hparams,
                "pytorch-lightning_version": lightning.__version__,
            },
            run / "best.ckpt",
        )
        assert val.main(["--ckpt", str(run / "best.ckpt"), "--batch", "4"]) == 0
        runs[name] = capsys.readouterr().out.split("COCO results")[0]
        runs[name + "_json"] = json.loads((run / "predictions.json").read_text())
    assert "Average Precision" in runs["v1"] and runs["v1"] == runs["v2"]
    assert runs["v1_json"] == runs["v2_json"] and runs["v1_json"]


def test_split_test_evaluates_the_runs_test_data(tmp_path, capsys) -> None:
    """`detforge val --ckpt C --split test` evaluates the run's `data.test_data`; a run without one is one line."""
    import lightning
    import torch

    from detforge.models.detector import ObjectDetector

    model = ObjectDetector(
        model="detforge_n", num_classes=5, score_thresh=0.0, imgsz=64, compile_model=False, deterministic=False
    )
    run = tmp_path / "run"
    run.mkdir()
    ckpt = {
        "state_dict": model.state_dict(),
        "hyper_parameters": dict(model.hparams),
        "pytorch-lightning_version": lightning.__version__,
    }
    torch.save(ckpt, run / "best.ckpt")
    (run / "config.yaml").write_text("data:\n  data: synthetic:8\n  test_data: null\n")
    assert cli_main(["val", "--ckpt", str(run / "best.ckpt"), "--split", "test"]) == 2
    assert "test_data" in capsys.readouterr().err
    (run / "config.yaml").write_text("data:\n  data: synthetic:8\n  test_data: synthetic:200\n")
    assert val.main(["--ckpt", str(run / "best.ckpt"), "--split", "test", "--batch", "8"]) == 0
    out = capsys.readouterr().out
    assert "Average Precision" in out
    # synthetic:200's evaluation split has 50 images (synthetic:8's, the val data, has 32)
    assert len({p["image_id"] for p in json.loads((run / "predictions.json").read_text())}) == 50
