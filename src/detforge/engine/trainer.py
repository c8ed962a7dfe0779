"""The Lightning ``Trainer`` detforge runs with: a run folder, its loggers and its callbacks.

``runs/train/<name>/`` holds ``config.yaml`` (written by LightningCLI), ``last.ckpt`` and ``best.ckpt``
(best ``val/map``), ``metrics.csv``, ``curves.png``, ``pr_curves.png``, ``val_predictions.png`` and
``results.json``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L

__all__ = [
    "build_trainer",
    "default_callbacks",
    "default_loggers",
    "resolve_resume",
    "resolve_run_dir",
    "run_dir_for_ranks",
]

_RUN_DIR_ENV = "DETFORGE_RUN_DIR"


def _distributed_launch() -> bool:
    """True in a process started by torchrun / SLURM / Lightning's DDP launcher (one of several ranks)."""
    return any(k in os.environ for k in ("LOCAL_RANK", "TORCHELASTIC_RUN_ID")) or (
        int(os.environ.get("SLURM_NTASKS", "1")) > 1
    )


def resolve_run_dir(
    project: str | Path = "runs/train", name: str | None = None, exist_ok: bool = False
) -> Path:
    """The run folder ``project/name``; without a name ``exp``, ``exp2``, ``exp3``... (the first free one).

    Every rank of a distributed run must agree on the folder, so: the ranks Lightning's DDP launcher starts
    take the launching process's folder from ``$DETFORGE_RUN_DIR`` (see ``run_dir_for_ranks``); under
    torchrun / SLURM (all ranks start at once) the name defaults to ``exp-<job id>`` and is never incremented.
    """
    if os.environ.get(_RUN_DIR_ENV) and _distributed_launch():
        return Path(os.environ[_RUN_DIR_ENV])
    project = Path(project)
    if name is None and _distributed_launch():
        job = os.environ.get("SLURM_JOB_ID") or os.environ.get("TORCHELASTIC_RUN_ID")
        name = f"exp-{job}" if job else "exp"
        exist_ok = True
    base = name or "exp"
    path = project / base
    n = 2
    while not exist_ok and path.exists():
        path = project / f"{base}{n}"
        n += 1
    return path


@contextmanager
def run_dir_for_ranks(run_dir: Path) -> Iterator[None]:
    """Within the block, ranks that Lightning's DDP launcher starts inherit ``run_dir`` (``$DETFORGE_RUN_DIR``)."""
    old = os.environ.get(_RUN_DIR_ENV)
    os.environ[_RUN_DIR_ENV] = str(run_dir)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(_RUN_DIR_ENV, None)
        else:
            os.environ[_RUN_DIR_ENV] = old


def resolve_resume(resume: str | None, run_dir: Path) -> str | None:
    """``--resume`` value -> checkpoint path: ``"last"`` is ``run_dir/last.ckpt``; a folder means its
    ``last.ckpt``; anything else is a checkpoint file. Missing files raise ``FileNotFoundError``."""
    if resume is None:
        return None
    path = run_dir / "last.ckpt" if resume == "last" else Path(resume)
    if path.is_dir():
        path = path / "last.ckpt"
    if not path.is_file():
        raise FileNotFoundError(f"--resume {resume}: no checkpoint at {path}")
    return str(path)


def default_loggers(run_dir: Path) -> list:
    """A CSV logger writing ``run_dir/metrics.csv`` (add TensorBoard with ``--trainer.logger+=...``)."""
    from lightning.pytorch.loggers import CSVLogger

    return [CSVLogger(save_dir=str(run_dir.parent), name=run_dir.name, version="")]


def default_callbacks(run_dir: Path, progress_bar: bool = True, artifacts: bool = True) -> list:
    """Checkpoints (``best.ckpt`` by ``val/map``, ``last.ckpt``), a rich progress bar, ``RunArtifacts`` and
    ``FitScheduleToTime`` (the cosine schedule ends when ``max_time`` does)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from detforge.engine.callbacks import RunArtifacts
    from detforge.engine.schedule import FitScheduleToTime
    from detforge.engine.threads import AdaptiveThreads

    callbacks: list = [
        AdaptiveThreads(),
        FitScheduleToTime(),
        ModelCheckpoint(
            dirpath=str(run_dir),
            filename="best",
            monitor="val/map",
            mode="max",
            save_last=True,
            save_top_k=1,
            auto_insert_metric_name=False,
            enable_version_counter=False,
        ),
    ]
    if progress_bar:
        from lightning.pytorch.callbacks import RichProgressBar

        callbacks.append(RichProgressBar(leave=True))
    if artifacts:
        callbacks.append(RunArtifacts(run_dir))
    return callbacks


def build_trainer(
    run_dir: str | Path, progress_bar: bool = True, artifacts: bool = True, **kwargs: Any
) -> L.Trainer:
    """A ``Trainer`` logging and checkpointing into ``run_dir``; ``kwargs`` are ``Trainer`` arguments
    (``callbacks`` given here are added to the defaults)."""
    run_dir = Path(run_dir)
    callbacks = default_callbacks(run_dir, progress_bar=progress_bar, artifacts=artifacts)
    callbacks += list(kwargs.pop("callbacks", None) or [])
    kwargs.setdefault("logger", default_loggers(run_dir))
    kwargs.setdefault("enable_progress_bar", progress_bar)
    return L.Trainer(callbacks=callbacks, default_root_dir=str(run_dir), **kwargs)
