"""Optimizer and scheduler factories (``detforge.engine.optim``)."""

import pytest
import torch
from torch import nn

from detforge.engine.optim import configure_schedule, create_optimizer, default_interval


def small_model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))


@pytest.mark.parametrize(
    "name, cls",
    [
        ("adamw", torch.optim.AdamW),
        ("adam", torch.optim.Adam),
        ("sgd", torch.optim.SGD),
        ("rmsprop", torch.optim.RMSprop),
        ("lamb", None),
        ({"class": "torch.optim.SGD", "params": {"momentum": 0.9}}, torch.optim.SGD),
    ],
)
def test_optimizers(name, cls):
    opt = create_optimizer(small_model(), name, lr=0.1, weight_decay=0.01)
    if cls is None:
        import timm.optim

        cls = timm.optim.Lamb
    assert isinstance(opt, cls)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim <= 1 for p in no_decay["params"])
    if isinstance(name, dict):
        assert opt.param_groups[0]["momentum"] == 0.9
    # torch's fused kernels for AdamW / Adam / SGD, by name or by class
    assert bool(opt.defaults.get("fused")) == (cls in (torch.optim.AdamW, torch.optim.Adam, torch.optim.SGD))


def test_optimizer_kwargs_choose_foreach_over_fused_and_frozen_weights_are_left_out():
    model = small_model()
    model[0].requires_grad_(False)
    opt = create_optimizer(model, "adamw", lr=0.1, weight_decay=0.01, optimizer_kwargs={"foreach": True})
    assert opt.defaults["foreach"] is True and not opt.defaults.get("fused")
    assert sum(len(g["params"]) for g in opt.param_groups) == 4  # BatchNorm (2) and the last conv (2)


@pytest.mark.parametrize("bad, allowed", [("adagrad", "lamb"), ({"params": {}}, "class")])
def test_unknown_optimizer_lists_the_allowed(bad, allowed):
    with pytest.raises(ValueError, match=allowed):
        create_optimizer(small_model(), bad, lr=0.1, weight_decay=0.0)


def _schedule(scheduler, kwargs=None, warmup=0, epochs=20, steps_per_epoch=5):
    opt = torch.optim.SGD(small_model().parameters(), lr=1.0)
    total = {"epoch": epochs, "step": epochs * steps_per_epoch}
    return opt, configure_schedule(opt, scheduler, kwargs, 1.0, warmup, 0.1, total.__getitem__)


@pytest.mark.parametrize(
    "scheduler, kwargs, after_9, after_10",
    [("step", {"step_size": 10}, 1.0, 0.1), ("multistep", {"milestones": [10, 15]}, 1.0, 0.1)],
)
def test_step_and_multistep_count_epochs(scheduler, kwargs, after_9, after_10):
    assert default_interval(scheduler) == "epoch" and default_interval("cosine") == "step"
    opt, out = _schedule(scheduler, kwargs)
    config = out["lr_scheduler"]
    assert config["interval"] == "epoch"  # Lightning steps it once per epoch
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        config["scheduler"].step()
    assert lrs[9] == pytest.approx(after_9) and opt.param_groups[0]["lr"] == pytest.approx(after_10)


def test_step_interval_stays_overridable():
    _, out = _schedule("step", {"step_size": 100, "interval": "step"})
    assert out["lr_scheduler"]["interval"] == "step"
    with pytest.raises(ValueError, match="interval"):
        _schedule("step", {"interval": "batch"})


def test_warmup_per_step_beside_an_epoch_scheduler():
    opt, (optimizers, configs) = _schedule("step", {"step_size": 2}, warmup=4)
    assert optimizers == [opt] and [c["interval"] for c in configs] == ["step", "epoch"]
    warm, step = configs[0]["scheduler"], configs[1]["scheduler"]
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(4):  # the first epoch's four optimizer steps
        warm.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs == pytest.approx([0.1, 0.325, 0.55, 0.775, 1.0])
    step.step()
    step.step()  # two epochs: step_size=2
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="per step"):
        _schedule("cosine", {"interval": "epoch"}, warmup=4)


def test_lr_multipliers_put_the_named_parameters_in_groups_of_their_own():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))
    backbone = {"0.": 0.1, "1.": 0.1}  # name prefixes, as backbone_lr_mult gives them
    opt = create_optimizer(model, "sgd", 0.01, 1e-4, {"weight_decay": 5e-4}, lr_multipliers=backbone)
    groups = [(g["lr"], g["weight_decay"], {id(p) for p in g["params"]}) for g in opt.param_groups]
    assert [(lr, wd) for lr, wd, _ in groups] == [
        (0.01, 5e-4),
        (0.01, 0.0),
        (pytest.approx(1e-3), 5e-4),
        (pytest.approx(1e-3), 0.0),
    ]
    assert groups[2][2] == {id(model[0].weight)} and groups[0][2] == {id(model[2].weight)}
    assert groups[3][2] == {id(model[0].bias), id(model[1].weight), id(model[1].bias)}


def test_explicit_lr_multipliers_come_before_the_models_own():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 2, 1))
    model.lr_multipliers = {"0.": 0.1, "1.": 0.5}
    opt = create_optimizer(model, "sgd", 0.01, 0.0, lr_multipliers={"0.": 0.25})
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert lr_of[id(model[0].weight)] == pytest.approx(0.0025)  # the explicit prefix wins
    assert lr_of[id(model[1].weight)] == pytest.approx(0.005)  # the model's own still applies
