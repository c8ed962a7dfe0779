import math
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.callbacks import Timer

from detforge.engine import schedule as schedule_module
from detforge.engine.schedule import FitScheduleToTime, WarmupCosine, WarmupCosineLR


def _lrs(scheduler, optimizer, steps):
    out = []
    for _ in range(steps):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def _sgd():
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.2)


def _torch_warmup_cosine(optimizer):
    """torch's LinearLR (5 steps from 0.1) then CosineAnnealingLR (25 steps): the reference schedule, and the
    scheduler detforge used before WarmupCosine."""
    return torch.optim.lr_scheduler.SequentialLR(
        optimizer,
        [
            torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.1, total_iters=5),
            torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=25),
        ],
        milestones=[5],
    )


def test_warmup_cosine_matches_torch_linear_then_cosine():
    ours_opt, ref_opt = _sgd(), _sgd()
    ours = torch.optim.lr_scheduler.LambdaLR(ours_opt, WarmupCosine(30, warmup_steps=5, warmup_ratio=0.1))
    ref = _torch_warmup_cosine(ref_opt)
    assert _lrs(ours, ours_opt, 31) == pytest.approx(_lrs(ref, ref_opt, 31), abs=1e-9)


def test_warmup_cosine_stays_at_min_after_total_and_no_warmup():
    fn = WarmupCosine(10, min_ratio=0.1)
    assert fn(0) == 1.0
    assert fn(5) == pytest.approx(0.1 + 0.9 * 0.5)
    assert fn(10) == pytest.approx(0.1) and fn(25) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="total_steps"):
        WarmupCosine(0)


class _FakeTimer(Timer):
    def __init__(self, remaining):
        super().__init__(duration="00:00:10:00")
        self.remaining = remaining

    def time_remaining(self, stage=None):
        return self.remaining


def _trainer(fn, remaining, step=0):
    scheduler = torch.optim.lr_scheduler.LambdaLR(_sgd(), fn)
    return SimpleNamespace(
        callbacks=[_FakeTimer(remaining)],
        lr_scheduler_configs=[SimpleNamespace(scheduler=scheduler)],
        global_step=step,
        strategy=SimpleNamespace(broadcast=lambda obj, src=0: obj),
    )


@pytest.fixture
def clock(monkeypatch):
    """A fake wall clock: ``clock[0]`` is what ``time.monotonic()`` returns inside the schedule module."""
    now = [100.0]
    monkeypatch.setattr(schedule_module.time, "monotonic", lambda: now[0])
    return now


def _run(fit, trainer, clock, steps, seconds_per_step, remaining=None):
    """Call the callback after each of ``steps``, the clock advancing ``seconds_per_step`` each time and the
    timer reporting ``remaining(step)`` seconds left when given."""
    for step in steps:
        clock[0] += seconds_per_step
        trainer.global_step = step
        if remaining is not None:
            trainer.callbacks[0].remaining = remaining(step)
        fit.on_train_batch_end(trainer)


def test_fit_schedule_to_time_shortens_to_the_steps_that_fit(clock):
    fn = WarmupCosine(1000, warmup_steps=10)
    trainer = _trainer(fn, remaining=60.0)
    fit = FitScheduleToTime(every_n_steps=10, min_steps=20)
    fit.on_train_batch_end(trainer)  # first step seen: start measuring
    _run(fit, trainer, clock, range(1, 41), 0.5, remaining=lambda step: 60.0 - 0.5 * step)
    # at step 40, 40 s remain at 0.5 s per step: 80 more steps
    assert fn.total_steps == 120
    assert fn.planned_steps == 1000
    assert fn(120) == pytest.approx(0.0, abs=1e-12) and fn(119) > 0


def test_fit_schedule_to_time_never_grows_and_ignores_runs_without_max_time(clock):
    fn = WarmupCosine(50)
    fit = FitScheduleToTime(every_n_steps=1, min_steps=1)
    _run(fit, _trainer(fn, remaining=1e6), clock, range(3), 1.0)
    assert fn.total_steps == 50  # plenty of time: the planned schedule stands

    no_budget = WarmupCosine(50)
    _run(fit, _trainer(no_budget, remaining=None), clock, range(30), 100.0)
    assert no_budget.total_steps == 50


def test_fit_schedule_to_time_never_ends_before_the_current_step(clock):
    fn = WarmupCosine(500, warmup_steps=5)
    fit = FitScheduleToTime(every_n_steps=1, min_steps=1)
    _run(fit, _trainer(fn, remaining=0.0), clock, range(3), 1.0)
    assert fn.total_steps == 6  # warmup + 1: out of time, the schedule ends now
    assert math.isfinite(fn(2))


def test_warmup_cosine_lr_resumes_from_an_old_sequential_state():
    old_opt = _sgd()
    old = _torch_warmup_cosine(old_opt)
    _lrs(old, old_opt, 12)
    opt = _sgd()
    new = WarmupCosineLR(opt, WarmupCosine(30, warmup_steps=5, warmup_ratio=0.1))
    with pytest.warns(UserWarning, match="older detforge"):
        new.load_state_dict(old.state_dict())
    assert new.last_epoch == 12
    assert opt.param_groups[0]["lr"] == pytest.approx(old_opt.param_groups[0]["lr"])

    again = WarmupCosineLR(_sgd(), WarmupCosine(99))
    again.load_state_dict(new.state_dict())  # its own state: no warning, the schedule's fields come back
    assert again.last_epoch == 12 and again.lr_lambdas[0].total_steps == 30
