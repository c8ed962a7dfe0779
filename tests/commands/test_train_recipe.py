"""The fine-tuning recipe: when ``--recipe auto`` picks it, that command-line options win over it, and that
each of its options reaches the object it names (optimizer groups, frozen BatchNorm, EMA, data module)."""

from __future__ import annotations

import pytest
import torch
from jsonargparse import Namespace

from detforge.commands.train import (
    FINETUNE_RECIPE,
    apply_recipe,
    build_cli,
    choose_recipe,
    pretrained_backbone,
)


def _cfg(data="coco:a.json:imgs", recipe="auto", model_kwargs=None, backbone=None, model="fcos_resnet18"):
    return Namespace(
        recipe=recipe,
        data=Namespace(data=data),
        model=Namespace(model=model, model_kwargs=model_kwargs, backbone=backbone, lr=3e-3),
    )


def test_auto_picks_finetune_for_a_pretrained_backbone_on_real_data():
    assert choose_recipe(_cfg(model_kwargs={"pretrained": "mnv2.pth"})) == (
        "finetune",
        "pretrained backbone, real data",
    )
    assert choose_recipe(_cfg(backbone={"model_name": "resnet18", "pretrained": True}))[0] == "finetune"
    class_path = {
        "class_path": "detforge.models.fcos.FCOS",
        "init_args": {"backbone": {"pretrained": "r.pth"}},
    }
    assert choose_recipe(_cfg(model=class_path))[0] == "finetune"


@pytest.mark.parametrize(
    "cfg",
    [
        _cfg(),  # from scratch
        _cfg(model_kwargs={"pretrained": False}),
        _cfg(data="synthetic:64", model_kwargs={"pretrained": "mnv2.pth"}),  # synthetic data
        _cfg(data="synthetic-dense", model_kwargs={"pretrained": "mnv2.pth"}),
        _cfg(recipe="none", model_kwargs={"pretrained": "mnv2.pth"}),
    ],
)
def test_auto_keeps_the_default_recipe_otherwise(cfg):
    assert choose_recipe(cfg)[0] is None


def test_finetune_by_name_and_unknown_names():
    assert choose_recipe(_cfg(data="synthetic:64", recipe="finetune"))[0] == "finetune"
    assert not pretrained_backbone(_cfg())
    with pytest.raises(ValueError, match="--recipe must be one of"):
        choose_recipe(_cfg(recipe="fast"))


def test_command_line_options_override_the_recipe():
    cfg = Namespace({"model.lr": 3e-3, "model.backbone_lr_mult": 1.0, "data.cache": "none"})
    applied = apply_recipe(cfg, ["--model.lr", "1e-4", "--data.cache=none"], "finetune")
    assert "model.lr" not in applied and "data.cache" not in applied
    assert cfg["model.lr"] == 3e-3  # left as parsed (jsonargparse already holds the given value)
    assert cfg["model.backbone_lr_mult"] == FINETUNE_RECIPE["model.backbone_lr_mult"]
    assert apply_recipe(cfg, ["--config", "run.yaml"], "finetune") == []
    assert apply_recipe(cfg, [], None) == []


@pytest.fixture(scope="module")
def pretrained_file(tmp_path_factory):
    import timm

    path = tmp_path_factory.mktemp("weights") / "test_resnet.pth"
    torch.save(timm.create_model("test_resnet", pretrained=False).state_dict(), path)
    return str(path)


def _finetune_argv(tmp_path, pretrained_file) -> list[str]:
    """A tiny pretrained FCOS on a 4-image COCO set written under ``tmp_path``: the recipe's ``auto`` case."""
    from detforge.data.synthetic import SyntheticShapes
    from detforge.data.writers import write_coco

    ann = write_coco(SyntheticShapes(4, (48, 64), num_classes=2, seed=0), tmp_path, split="train")
    return [
        "--model=fcos_test_resnet",
        f'--model.model_kwargs={{"pretrained": "{pretrained_file}"}}',
        "--model.fpn_channels=16",
        "--model.head_num_convs=1",
        f"--data=coco:{ann}:{tmp_path / 'train'}",
        "--imgsz=64",
        "--batch=2",
        f"--project={tmp_path / 'runs'}",
        "--trainer.enable_progress_bar=false",
    ]


def test_every_recipe_option_reaches_its_object(tmp_path, pretrained_file, capsys, monkeypatch):
    from detforge.engine.ema import ExponentialMovingAverage
    from detforge.models.frozen_norm import FusedFrozenBatchNorm2d, FusedFrozenBatchNormAct2d

    argv = [
        *_finetune_argv(tmp_path, pretrained_file),
        "--model.max_detections_per_image=200",  # a command-line option wins over the recipe
    ]
    cli = build_cli(argv)
    assert (
        "recipe: finetune (pretrained backbone, real data); kept from the command line: model.max_detections_per_image"
        in (capsys.readouterr().err)
    )
    module, data = cli.model, cli.datamodule
    hp = module.hparams
    assert hp.lr == FINETUNE_RECIPE["model.lr"]
    assert module.model.postprocess_settings.max_detections_per_image == 200
    body = module.backbone_body
    assert any(isinstance(m, FusedFrozenBatchNormAct2d | FusedFrozenBatchNorm2d) for m in body.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in body.modules())
    ema = module.configure_callbacks()
    assert isinstance(ema[0], ExponentialMovingAverage)  # the general default, kept
    monkeypatch.setattr(module, "_total_steps", lambda interval="step": 100)  # no trainer attached
    configured = module.configure_optimizers()
    opt = configured["optimizer"]
    assert hp.warmup_steps == 100  # the general default (30 measured worse)
    backbone_ids = {id(p) for p in body.parameters()}
    for group in (g for g in opt.param_groups if g["params"]):
        in_body = {id(p) in backbone_ids for p in group["params"]}
        assert len(in_body) == 1
        expected = hp.lr * (FINETUNE_RECIPE["model.backbone_lr_mult"] if in_body == {True} else 1.0)
        assert group["initial_lr"] == pytest.approx(expected)  # the scheduler scales "lr" from it
    assert sum(len(g["params"]) for g in opt.param_groups) == sum(
        1 for p in module.model.parameters() if p.requires_grad
    )
    assert data.cache == "ram" and not data.photometric and data.scale_jitter == (0.75, 1.25)
    assert data.num_workers >= 0


def test_every_model_recipe_names_a_model_and_real_options():
    """A typo in a registered recipe (a model's, a prefix's or its weights') would set a key nothing reads:
    each recipe belongs to a registered model or prefix and each key names an argument of the object its
    group builds."""
    import inspect

    import lightning as L

    from detforge.data.datamodule import DetectionDataModule
    from detforge.models.detector import ObjectDetector
    from detforge.models.registry import _PREFIXES, _RECIPES, is_model, list_models
    from detforge.models.weights import _WEIGHTS

    list_models()  # registers the built-in models
    groups = {"model": ObjectDetector, "data": DetectionDataModule, "trainer": L.Trainer}
    recipes = list(_RECIPES.items()) + [
        (name, weights.recipe) for name, tags in _WEIGHTS.items() for weights in tags.values()
    ]
    assert any(name == "detforge_n" for name, _ in recipes)
    for name, recipe in recipes:
        assert is_model(name) or name in _PREFIXES, name
        for key in recipe:
            group, _, option = key.partition(".")
            assert option in inspect.signature(groups[group].__init__).parameters, (name, key)


def test_a_prefix_recipe_covers_the_prefix_models(monkeypatch):
    """``faster_rcnn_`` covers every ``faster_rcnn_<timm name>``; a model's own entry wins over a prefix."""
    from detforge.commands.train import apply_model_recipe, model_recipe
    from detforge.models.registry import _RECIPES

    assert model_recipe("faster_rcnn_resnet18") == {"model.lr": 1e-3}
    assert model_recipe("faster_rcnn_n") == {"model.lr": 1e-3}
    monkeypatch.setitem(_RECIPES, "faster_rcnn_n", {"model.lr": 5e-4})
    assert model_recipe("faster_rcnn_n") == {"model.lr": 5e-4}  # a model's own entry wins
    assert model_recipe("fcos_resnet18") == {} and model_recipe("detforge_n") == {"model.lr": 1e-2}
    cfg = Namespace({"model.model": "faster_rcnn_convnext_atto", "model.lr": 3e-3})
    assert apply_model_recipe(cfg, []) == ["model.lr"] and cfg["model.lr"] == 1e-3
    given = Namespace({"model.model": "faster_rcnn_convnext_atto", "model.lr": 3e-3})
    assert apply_model_recipe(given, ["--model.lr", "3e-3"]) == [] and given["model.lr"] == 3e-3


def test_a_model_recipe_input_size_moves_the_models_size_too():
    """yolov1_n's recipe trains at 224 px (its 7 x 7 grid = the stride-32 map): data.imgsz and the model's
    imgsz (linked at parse time) both follow, unless --imgsz is given."""
    from detforge.commands.train import apply_model_recipe

    def cfg():
        return Namespace({"model.model": "yolov1_n", "model.lr": 3e-3, "data.imgsz": 128, "model.imgsz": 128})

    ours = cfg()
    assert set(apply_model_recipe(ours, [])) == {"model.lr", "data.imgsz"}
    assert ours["data.imgsz"] == ours["model.imgsz"] == 224 and ours["model.lr"] == 1e-2
    given = cfg()
    assert apply_model_recipe(given, ["--data.imgsz", "128"]) == ["model.lr"]
    assert given["data.imgsz"] == given["model.imgsz"] == 128


def test_the_benchmark_ablations_undo_each_recipe_entry(tmp_path, pretrained_file, capsys):
    """benchmarks/finetune.py --ablate undoes one recipe entry per run: the table names every entry, and each
    row's flags give the value a run without the recipe gets."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "finetune.py"
    spec = importlib.util.spec_from_file_location("finetune_benchmark", script)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert set(bench.ABLATIONS) == set(FINETUNE_RECIPE)

    argv = _finetune_argv(tmp_path, pretrained_file)

    def values(cli):
        out = {}
        for key in FINETUNE_RECIPE:
            group, name = key.split(".")
            out[key] = cli.model.hparams[name] if group == "model" else getattr(cli.datamodule, name)
        return out

    flags = [flag for row in bench.ABLATIONS.values() for flag in row]
    undone = values(build_cli([*argv, *flags]))
    without = values(build_cli([*argv, "--recipe=none"]))
    recipe = values(build_cli(argv))
    assert {k: v for k, v in undone.items() if k != "data.num_workers"} == {
        k: v for k, v in without.items() if k != "data.num_workers"
    }
    changed = {k for k in FINETUNE_RECIPE if undone[k] != recipe[k]}
    assert changed == set(FINETUNE_RECIPE) - {"data.num_workers"}
    capsys.readouterr()
