"""The benchmark scripts the README quotes still start: each parses ``--help``, and the accuracy scripts build
the training command they would run (the subprocess is faked), so a changed helper signature fails here
rather than after a user's first 10-minute run."""

from __future__ import annotations

import importlib.util
import json
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
SCRIPTS = sorted(p for p in BENCHMARKS.glob("*.py") if p.name != "timing.py")


@pytest.fixture
def bench_path(monkeypatch):
    """``benchmarks/`` importable as the scripts expect (``from timing import ...``)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    names = ("timing", "family_accuracy", "detr_accuracy", "train_step")
    for name in names:
        monkeypatch.delitem(sys.modules, name, raising=False)
    yield
    for name in names:  # the scripts' modules leave with the test (monkeypatch restores only what it removed)
        sys.modules.pop(name, None)


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_script_parses_help(script, bench_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [str(script), "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(script), run_name="__main__")
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("script", ["family_accuracy", "detr_accuracy"])
def test_accuracy_scripts_build_their_train_command(script, bench_path, monkeypatch, tmp_path):
    family = _load("family_accuracy")
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "not run in this test")

    monkeypatch.setattr(family.subprocess, "run", fake_run)
    module = family if script == "family_accuracy" else _load("detr_accuracy")
    argv = ["--models", "detforge_n", "--project", str(tmp_path), "--model-kwargs", 'detforge_n={"fpn_channels": 32}']
    argv += ["--budget", "00:00:00:05"] if script == "family_accuracy" else ["--budgets", "00:00:00:05"]
    assert module.main([*argv, "--", "--batch", "2"]) == 0
    assert calls, "no training command was built"
    cmd = calls[0]
    assert cmd[cmd.index("--model") + 1] == "detforge_n"
    assert cmd[cmd.index("--model.model_kwargs") + 1] == '{"fpn_channels": 32}'
    assert cmd[cmd.index("--trainer.max_time") + 1] == "00:00:00:05"
    assert cmd[-2:] == ["--batch", "2"]
    if script == "detr_accuracy":  # the budget, not the recipe's 30 epochs, ends its runs
        assert cmd[cmd.index("--trainer.max_epochs") + 1] == "100000"


def test_accuracy_row_reads_steps_and_keeps_the_log(bench_path, monkeypatch, tmp_path, capsys):
    family = _load("family_accuracy")
    detr = _load("detr_accuracy")

    def fake_run(cmd, **kwargs):  # a finished run: results.json and metrics.csv in its folder
        run = tmp_path / cmd[cmd.index("--name") + 1]
        run.mkdir(parents=True)
        stats = dict.fromkeys(("map", "map_50", "map_small", "map_medium", "map_large"), 0.25)
        (run / "results.json").write_text(json.dumps(stats))
        (run / "metrics.csv").write_text("epoch,step,train/loss\n0,10,1.0\n1,37,0.5\n1,37,\n")
        return subprocess.CompletedProcess(cmd, 0, "detforge: threads 2\n", "")

    monkeypatch.setattr(family.subprocess, "run", fake_run)
    argv = ["--models", "detforge_n", "--project", str(tmp_path), "--budgets", "00:00:00:05"]
    assert detr.main([*argv, "--out", str(tmp_path / "rows.json")]) == 0
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert rows[0]["steps"] == 37 and rows[0]["map"] == 0.25
    assert (Path(rows[0]["run"]) / "train.log").read_text() == "detforge: threads 2\n"
    assert "0.250 (37)" in capsys.readouterr().out
