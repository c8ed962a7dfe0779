"""Optimizer and learning-rate scheduler factories for :class:`~detforge.models.detector.ObjectDetector`.

- :func:`create_optimizer`: a torch / timm optimizer by name (or ``{"class": dotted path, "params": {...}}``)
  over two parameter groups: weights with weight decay, biases and norm parameters without;
- :func:`configure_schedule`: the ``configure_optimizers`` answer for a scheduler name (or dict), with an
  optional linear warmup. ``"cosine"`` and ``"onecycle"`` are stepped every optimizer step, ``"step"`` and
  ``"multistep"`` every epoch (their ``step_size`` / ``milestones`` count epochs, as users of
  ``torch.optim.lr_scheduler`` expect); ``scheduler_kwargs["interval"]`` overrides either.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import Any, Literal, get_args

import torch
from torch import nn

from detforge.engine.schedule import WarmupCosine, WarmupCosineLR

__all__ = [
    "OPTIMIZERS",
    "OptimizerName",
    "SchedulerName",
    "check_optimizer",
    "check_scheduler",
    "configure_schedule",
    "create_optimizer",
    "default_interval",
    "import_class",
    "param_groups",
]

OptimizerName = Literal["adamw", "adam", "sgd", "rmsprop", "adamp", "sgdp", "lamb"]
SchedulerName = Literal["cosine", "step", "multistep", "onecycle"]

OPTIMIZERS: dict[str, str] = {
    "adamw": "torch.optim.AdamW",
    "adam": "torch.optim.Adam",
    "sgd": "torch.optim.SGD",
    "rmsprop": "torch.optim.RMSprop",
    "adamp": "timm.optim.AdamP",
    "sgdp": "timm.optim.SGDP",
    "lamb": "timm.optim.Lamb",
}
_FUSED_OPTIMIZERS = (torch.optim.AdamW, torch.optim.Adam, torch.optim.SGD)
_EPOCH_SCHEDULERS = ("step", "multistep")


def import_class(path: str, what: str) -> type:
    """The class at dotted ``path`` (``"torch.optim.AdamW"``); a ValueError naming ``what`` otherwise."""
    if "." not in path:
        raise ValueError(f"{what} class must be a dotted path like 'torch.optim.AdamW', got {path!r}")
    module, name = path.rsplit(".", 1)
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"{what} class {path!r} cannot be imported: {err}") from err


def check_optimizer(optimizer: str | dict[str, Any]) -> None:
    """ValueError listing the allowed values unless ``optimizer`` is a known name or a dict with ``class``."""
    if isinstance(optimizer, str) and optimizer.lower() not in OPTIMIZERS:
        raise ValueError(
            f"optimizer must be one of {tuple(OPTIMIZERS)} or a dict with 'class', got {optimizer!r}"
        )
    if isinstance(optimizer, dict) and "class" not in optimizer:
        raise ValueError(f"optimizer dict needs a 'class' key (dotted path), got keys {sorted(optimizer)}")


def check_scheduler(scheduler: str | dict[str, Any] | None) -> None:
    """ValueError listing the allowed values unless ``scheduler`` is a known name, a dict with ``class``,
    ``"none"`` or None."""
    if isinstance(scheduler, str) and scheduler.lower() not in (*get_args(SchedulerName), "none"):
        raise ValueError(
            f"scheduler must be one of {get_args(SchedulerName)}, a dict with 'class', or None; got {scheduler!r}"
        )
    if isinstance(scheduler, dict) and "class" not in scheduler:
        raise ValueError(f"scheduler dict needs a 'class' key (dotted path), got keys {sorted(scheduler)}")


def param_groups(
    named_parameters: Iterable[tuple[str, nn.Parameter]],
    weight_decay: float,
    lr: float | None = None,
    lr_multipliers: dict[int, float] | None = None,
) -> list[dict]:
    """Two groups of the trainable parameters: weights (``weight_decay``) and biases / norm parameters (0).

    With ``lr_multipliers`` (``id(parameter) -> multiplier``, e.g. a backbone's), the parameters it names go
    into two more groups of the same kinds whose ``lr`` is ``lr * multiplier`` (one multiplier per call).
    """
    decay, no_decay, scaled_decay, scaled_no_decay = [], [], [], []
    multipliers = lr_multipliers or {}
    for name, param in named_parameters:
        if not param.requires_grad:
            continue
        no_wd = param.ndim <= 1 or name.endswith(".bias")
        if id(param) in multipliers:
            (scaled_no_decay if no_wd else scaled_decay).append(param)
        else:
            (no_decay if no_wd else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if multipliers:
        values = set(multipliers.values())
        if len(values) != 1 or lr is None:
            raise ValueError(f"lr_multipliers needs lr and one multiplier, got {sorted(values)}")
        scaled_lr = lr * values.pop()
        groups += [
            {"params": scaled_decay, "weight_decay": weight_decay, "lr": scaled_lr},
            {"params": scaled_no_decay, "weight_decay": 0.0, "lr": scaled_lr},
        ]
    return groups


def _fusable(groups: list[dict]) -> bool:
    """True when torch's fused optimizer kernels take every parameter (floating point, on CPU or CUDA)."""
    params = [p for group in groups for p in group["params"]]
    return bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)


def create_optimizer(
    model: nn.Module,
    optimizer: str | dict[str, Any],
    lr: float,
    weight_decay: float,
    optimizer_kwargs: dict[str, Any] | None = None,
    lr_multipliers: dict[int, float] | None = None,
) -> torch.optim.Optimizer:
    """The optimizer over ``model``'s trainable parameters (see :func:`param_groups`; ``lr_multipliers``:
    ``id(parameter) -> multiplier`` of the learning rate, e.g. ``backbone_lr_mult`` on the backbone's).

    Args:
        optimizer: a name in :data:`OPTIMIZERS` or ``{"class": "pkg.Cls", "params": {...}}``.
        optimizer_kwargs: extra keyword arguments. AdamW, Adam and SGD use torch's fused kernels unless
            ``fused`` or ``foreach`` is given; an explicit ``weight_decay`` here sets the decayed group's.
    """
    check_optimizer(optimizer)
    kwargs = {"lr": lr, **(optimizer_kwargs or {})}
    if isinstance(optimizer, dict):
        cls = import_class(optimizer["class"], "optimizer")
        kwargs.update(optimizer.get("params", {}))
    else:
        cls = import_class(OPTIMIZERS[optimizer.lower()], "optimizer")
    groups = param_groups(model.named_parameters(), weight_decay, kwargs["lr"], lr_multipliers)
    if cls in _FUSED_OPTIMIZERS and not {"fused", "foreach"} & set(kwargs) and _fusable(groups):
        kwargs["fused"] = True  # one kernel for all parameters: AdamW's step 1.9 ms instead of 7.7 (CPU)
    if "weight_decay" in kwargs:  # an explicit weight decay wins over the default split
        decay = kwargs.pop("weight_decay")
        for group in groups[::2]:  # the decayed groups (the backbone's too)
            group["weight_decay"] = decay
    return cls(groups, **kwargs)


def default_interval(scheduler: str | dict[str, Any] | None) -> Literal["step", "epoch"]:
    """How often a scheduler steps unless ``scheduler_kwargs["interval"]`` says: per epoch for ``"step"``
    and ``"multistep"``, per optimizer step otherwise."""
    return "epoch" if isinstance(scheduler, str) and scheduler.lower() in _EPOCH_SCHEDULERS else "step"


def _main_scheduler(
    optimizer: torch.optim.Optimizer,
    scheduler: str | dict[str, Any],
    kwargs: dict[str, Any],
    lr: float,
    warmup_steps: int,
    warmup_ratio: float,
    total: int,
) -> Any:
    """The scheduler itself; ``total``: scheduler steps of the whole run (in its interval)."""
    sched = torch.optim.lr_scheduler
    if isinstance(scheduler, dict):
        cls = import_class(scheduler["class"], "scheduler")
        return cls(optimizer, **{**kwargs, **scheduler.get("params", {})})
    name = scheduler.lower()
    if name == "cosine":  # warmup and cosine in one multiplier, so a time budget can shorten it
        t_max = kwargs.pop("T_max", max(total - warmup_steps, 1))
        min_ratio = kwargs.pop("eta_min", 0.0) / lr
        if kwargs:
            raise ValueError(f"unknown scheduler_kwargs for 'cosine': {sorted(kwargs)} (T_max, eta_min)")
        return WarmupCosineLR(
            optimizer, WarmupCosine(warmup_steps + t_max, warmup_steps, warmup_ratio, min_ratio)
        )
    if name == "step":
        return sched.StepLR(
            optimizer, step_size=kwargs.pop("step_size", 8), gamma=kwargs.pop("gamma", 0.1), **kwargs
        )
    if name == "multistep":
        milestones = kwargs.pop("milestones", [8, 11])
        return sched.MultiStepLR(optimizer, milestones=milestones, gamma=kwargs.pop("gamma", 0.1), **kwargs)
    steps = kwargs.pop("total_steps", max(total - warmup_steps, 1))
    return sched.OneCycleLR(optimizer, max_lr=kwargs.pop("max_lr", lr * 10), total_steps=steps, **kwargs)


def configure_schedule(
    optimizer: torch.optim.Optimizer,
    scheduler: str | dict[str, Any] | None,
    scheduler_kwargs: dict[str, Any] | None,
    lr: float,
    warmup_steps: int,
    warmup_ratio: float,
    total_steps: Callable[[str], int],
) -> dict[str, Any] | tuple[list, list]:
    """What ``LightningModule.configure_optimizers`` returns for ``optimizer`` and ``scheduler``.

    Args:
        scheduler: ``"cosine"``, ``"step"``, ``"multistep"``, ``"onecycle"``, ``{"class": ..., "params": ...}``,
            ``"none"`` or None.
        scheduler_kwargs: the scheduler's keyword arguments plus ``interval`` ("step" / "epoch", default
            :func:`default_interval`) and ``frequency``.
        warmup_steps / warmup_ratio: linear warmup over this many optimizer steps from ``warmup_ratio * lr``
            (built into ``"cosine"``; chained before a per-step scheduler; a separate per-step scheduler
            before a per-epoch one). Cosine stepped per epoch cannot have a per-step warmup (ValueError).
        total_steps: ``total_steps(interval)`` -> scheduler steps of the whole run (epochs or optimizer steps).
    """
    check_scheduler(scheduler)
    kwargs = dict(scheduler_kwargs or {})
    interval = kwargs.pop("interval", default_interval(scheduler))
    frequency = kwargs.pop("frequency", 1)
    if interval not in ("step", "epoch"):
        raise ValueError(f"scheduler_kwargs interval must be 'step' or 'epoch', got {interval!r}")
    has_main = scheduler is not None and scheduler != "none"
    if warmup_steps > 0 and interval != "step" and scheduler == "cosine":
        raise ValueError("warmup_steps needs a scheduler stepped per step (scheduler_kwargs interval='step')")
    main = None
    if has_main:
        main = _main_scheduler(
            optimizer, scheduler, kwargs, lr, warmup_steps, warmup_ratio, total_steps(interval)
        )
    configs = []
    if warmup_steps > 0 and not isinstance(main, WarmupCosineLR):  # cosine has the warmup built in
        warm = torch.optim.lr_scheduler.LinearLR(
            optimizer, start_factor=warmup_ratio, end_factor=1.0, total_iters=warmup_steps
        )
        if main is not None and interval == "step":
            main = torch.optim.lr_scheduler.SequentialLR(optimizer, [warm, main], milestones=[warmup_steps])
        else:  # a per-step warmup beside a per-epoch scheduler (both multiply the learning rate)
            configs.append({"scheduler": warm, "interval": "step", "frequency": 1})
    if main is not None:
        configs.append({"scheduler": main, "interval": interval, "frequency": frequency})
    if not configs:
        return {"optimizer": optimizer}
    if len(configs) == 1:
        return {"optimizer": optimizer, "lr_scheduler": configs[0]}
    return [optimizer], configs  # Lightning's form for several schedulers of one optimizer
