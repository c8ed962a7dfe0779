import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from detforge.commands.train import apply_model_recipe, expand_aliases, main

TINY = [
    "--model.model=null",
    "--model.backbone=test_resnet",
    "--model.fpn_channels=16",
    "--model.head_num_convs=1",
    "--model.strides=[8,16,32]",
    "--model.warmup_steps=2",
    "--data=synthetic:8",
    "--imgsz=64",
    "--batch=4",
    "--workers=0",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--trainer.limit_val_batches=2",
]


def test_expand_aliases():
    argv = [
        "--epochs",
        "3",
        "--imgsz=96",
        "--model",
        "nexus",
        "--data",
        "cfg.yaml",
        "--num-nodes",
        "2",
        "--x",
        "1",
    ]
    assert expand_aliases(argv) == [
        "--trainer.max_epochs",
        "3",
        "--data.imgsz",
        "96",
        "--model.model",
        "nexus",
        "--data",
        "cfg.yaml",
        "--trainer.num_nodes",
        "2",
        "--x",
        "1",
    ]


def test_model_recipe_fills_what_the_command_line_leaves_out():
    from jsonargparse import Namespace

    def cfg(model, lr=3e-3):
        return Namespace(model=Namespace(model=model, lr=lr))

    c = cfg("detforge_n")
    assert apply_model_recipe(c, []) == ["model.lr"] and c.model.lr == 1e-2
    c = cfg("detforge_n", lr=5e-4)
    assert apply_model_recipe(c, ["--model.lr", "5e-4"]) == [] and c.model.lr == 5e-4
    c = cfg("detforge_n")
    assert apply_model_recipe(c, ["--config", "run.yaml"]) == [] and c.model.lr == 3e-3
    c = cfg("nexus")
    assert apply_model_recipe(c, []) == [] and c.model.lr == 3e-3
    c = cfg(None)
    assert apply_model_recipe(c, []) == []


@pytest.mark.parametrize("spec", ["synthetic-dense:64", "synthetic-video:4"])
def test_synthetic_recipe_is_reset_for_synthetic_dense_and_video(spec):
    from jsonargparse import Namespace

    from detforge.commands.train import drop_synthetic_recipe

    def cfg(spec):
        data = Namespace(
            data=spec, imgsz=128, photometric=False, scale_jitter=(0.75, 1.25), dataset_kwargs={"cache": True}
        )
        return Namespace(data=data, model=Namespace(imgsz=128))

    c = cfg(spec)
    assert "data.dataset_kwargs" in drop_synthetic_recipe(c, ["--data.data", spec])
    assert c.data.dataset_kwargs is None and c.data.imgsz == 256 and c.model.imgsz == 256
    c = cfg("synthetic:64")
    assert drop_synthetic_recipe(c, ["--data.data", "synthetic:64"]) == [] and c.data.imgsz == 128


def test_train_writes_run_folder_and_resumes(tmp_path, capsys):
    project = tmp_path / "runs"
    assert main([*TINY, "--epochs=1", f"--project={project}", "--name=t"]) == 0
    run = project / "t"
    for name in (
        "config.yaml",
        "last.ckpt",
        "best.ckpt",
        "metrics.csv",
        "curves.png",
        "pr_curves.png",
        "val_predictions.png",
        "results.json",
        "train_batches.jpg",
        "labels.png",
    ):
        assert (run / name).is_file(), name
    assert not list(run.glob(".*")), "temporary files left behind"
    out = capsys.readouterr().out
    assert "Average Precision" in out and "IoU=0.50:0.95" in out
    ckpt = torch.load(run / "last.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"]["num_classes"] == 5
    assert ckpt["hyper_parameters"]["class_names"][0] == "circle"
    assert ckpt["hyper_parameters"]["imgsz"] == 64
    steps = ckpt["global_step"]
    results = json.loads((run / "results.json").read_text())
    assert 0.0 <= results["map"] <= 1.0

    # --resume last continues the same run with its optimizer, scheduler and EMA state
    assert main([*TINY, "--epochs=2", f"--project={project}", "--name=t", "--resume=last"]) == 0
    resumed = torch.load(run / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == 2 * steps
    assert "current_model_state" in resumed

    # the saved config reproduces the run; a new name gets a new folder
    assert main(["--config", str(run / "config.yaml"), "--epochs=1", "--name=t", f"--project={project}"]) == 0
    assert (project / "t2" / "last.ckpt").is_file()


def test_missing_resume_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="resume"):
        main([*TINY, f"--project={tmp_path}", "--name=none", "--resume=last"])


@pytest.mark.slow
def test_ddp_two_cpu_processes_agree_on_the_metric(tmp_path):
    helper_dir = Path(__file__).resolve().parents[1] / "engine"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(helper_dir), os.environ.get("PYTHONPATH", "")]))
    env.pop("DETFORGE_RUN_DIR", None)
    callback = json.dumps(
        {"class_path": "ddp_rank_metrics.RankMetrics", "init_args": {"out_dir": str(tmp_path)}}
    )
    cmd = [
        sys.executable,
        "-m",
        "detforge.cli",
        "train",
        *TINY,
        "--epochs=1",
        "--accelerator=cpu",
        "--devices=2",
        "--strategy=ddp",
        f"--project={tmp_path / 'runs'}",
        "--name=ddp",
        f"--trainer.callbacks+={callback}",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world_size"] == ranks[1]["world_size"] == 2
    assert ranks[0]["val/map"] == ranks[1]["val/map"]
    assert ranks[0]["stats_map"] == ranks[1]["stats_map"] == pytest.approx(ranks[0]["val/map"])
    assert (tmp_path / "runs" / "ddp" / "last.ckpt").is_file()
    assert not (tmp_path / "runs" / "ddp2").exists()  # both ranks used one run folder


def test_model_options_and_a_built_model_on_the_command_line(tmp_path):
    from detforge.commands.train import build_cli

    common = ["--data=synthetic:8", "--imgsz=64", "--batch=4", "--workers=0", f"--project={tmp_path}"]
    # 0.5 was ObjectDetector's own default, so it used to be dropped and detforge_n kept FCOS's 0.6
    cli = build_cli([*common, "--model.nms_thresh", "0.5", "--name=a"])
    assert cli.model.hparams.model == "detforge_n" and cli.model.model.nms_thresh == 0.5
    assert build_cli([*common, "--name=b"]).model.model.nms_thresh == 0.6
    # a built Detector: class_path / init_args (YAML: model: {model: {class_path: ..., init_args: {...}}})
    built = [
        "--model.model.class_path=detforge.models.fcos.FCOS",
        "--model.model.init_args.backbone=test_resnet",
        "--model.model.init_args.num_classes=5",
        "--model.model.init_args.fpn_channels=16",
    ]
    cli = build_cli([*common, *built, "--name=c"])
    assert type(cli.model.model).__name__ == "FCOS" and cli.model.model.init_args["fpn_channels"] == 16
    assert cli.model.hparams.model["class_path"] == "detforge.models.fcos.FCOS"
    # model options belong to the built model's init_args
    with pytest.raises(ValueError, match="fpn_channels"):
        build_cli([*common, *built, "--model.fpn_channels=8", "--name=d"])
