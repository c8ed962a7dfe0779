"""The Lightning ``Trainer`` detforge runs with: a run folder, its loggers and its callbacks.

``runs/train/<name>/`` holds ``config.yaml`` (written by LightningCLI), ``last.ckpt`` and ``best.ckpt``
(best ``val/map``), ``metrics.csv``, ``curves.png``, ``pr_curves.png``, ``val_predictions.png`` and
``results.json``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import lightning as L
from lightning.pytorch.utilities import rank_zero_only

from detforge.errors import UserError

__all__ = [
    "CHECKPOINT_EVERY_MINUTES",
    "MissingCheckpointError",
    "RunError",
    "build_trainer",
    "check_run_dir_writable",
    "default_callbacks",
    "default_loggers",
    "resolve_resume",
    "resolve_run_dir",
    "run_dir_for_ranks",
]

_RUN_DIR_ENV = "DETFORGE_RUN_DIR"

# last.ckpt is written at the end of every epoch and, inside longer epochs, at least this often: a killed run
# loses at most 5 minutes, while a save (detforge_n with optimizer and EMA state: ~20 MB; large models a few
# hundred MB, seconds at most) stays a small fraction of them. $DETFORGE_CHECKPOINT_MINUTES overrides it (0: after
# every step).
CHECKPOINT_EVERY_MINUTES = 5.0
_CHECKPOINT_MINUTES_ENV = "DETFORGE_CHECKPOINT_MINUTES"


class RunError(UserError):
    """A run cannot start or go on for a reason the user can fix (nothing to resume, an unwritable or full
    run folder). ``str(err)`` is one line meant for the console; ``detforge`` prints it and exits with 2
    (:mod:`detforge.errors`)."""


class MissingCheckpointError(RunError, FileNotFoundError):
    """``--resume`` names a checkpoint that does not exist."""


def check_run_dir_writable(run_dir: str | Path) -> None:
    """Create ``run_dir`` and write a small file in it; ``RunError`` naming the folder if that fails."""
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".write-test-", dir=run_dir)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(b"\0" * 65536)
                f.flush()
                os.fsync(f.fileno())
        finally:
            os.remove(tmp)
    except OSError as err:
        raise RunError(f"run folder {run_dir} is not writable: {err.strerror or err}") from err


def _checkpoint_minutes(minutes: float | None) -> float:
    if minutes is None:
        text = os.environ.get(_CHECKPOINT_MINUTES_ENV, "").strip()
        try:
            minutes = float(text) if text else CHECKPOINT_EVERY_MINUTES
        except ValueError:
            raise ValueError(
                f"${_CHECKPOINT_MINUTES_ENV} must be a number of minutes, got {text!r}"
            ) from None
    if minutes < 0:
        raise ValueError(f"checkpoint_every_minutes must be >= 0, got {minutes}")
    return float(minutes)


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
    ``last.ckpt``; anything else is a checkpoint file. Missing files raise ``MissingCheckpointError`` (a
    ``RunError`` and a ``FileNotFoundError``)."""
    if resume is None:
        return None
    path = run_dir / "last.ckpt" if resume == "last" else Path(resume)
    if path.is_dir():
        path = path / "last.ckpt"
    if not path.is_file():
        raise MissingCheckpointError(f"--resume {resume}: nothing to resume, no checkpoint at {path}")
    return str(path)


def default_loggers(run_dir: Path) -> list:
    """A CSV logger writing ``run_dir/metrics.csv`` (add TensorBoard with ``--trainer.logger+=...``). It is
    the first thing ``fit`` writes, so it first checks that the run folder is writable (``RunError``)."""
    from lightning.pytorch.loggers import CSVLogger

    class RunFolderCSVLogger(CSVLogger):
        @property
        def experiment(self):  # Lightning touches every logger's experiment before any callback's setup
            if self._experiment is None and rank_zero_only.rank == 0:
                check_run_dir_writable(self.log_dir)
            return super().experiment

    return [RunFolderCSVLogger(save_dir=str(run_dir.parent), name=run_dir.name, version="")]


def default_callbacks(
    run_dir: Path,
    progress_bar: bool = True,
    artifacts: bool = True,
    checkpoint_every_minutes: float | None = None,
    threads: int | Literal["auto"] = "auto",
) -> list:
    """Checkpoints (``best.ckpt`` by ``val/map``; ``last.ckpt`` at every epoch end and every
    ``checkpoint_every_minutes`` inside an epoch, default ``$DETFORGE_CHECKPOINT_MINUTES`` or
    ``CHECKPOINT_EVERY_MINUTES``; both written atomically), a check that the run folder is writable,
    ``AdaptiveThreads(threads)`` (``"auto"`` adapts unless ``$DETFORGE_NUM_THREADS`` fixes the count),
    ``MemoryFormatChoice`` (channels-last or NCHW, whichever is faster here; ``$DETFORGE_MEMORY_FORMAT``),
    ``CpuPrecisionChoice`` (bfloat16 autocast where the CPU has it natively and it is faster;
    ``$DETFORGE_CPU_PRECISION``), ``FlushDenormals`` (denormal floats flushed to zero while the Trainer runs;
    ``$DETFORGE_FLUSH_DENORMAL``), a rich
    progress bar, ``RunArtifacts``, ``TrainBatchPictures`` and ``LabelsPlot`` (``train_batches.jpg``,
    ``labels.png``) and ``FitScheduleToTime`` (the cosine schedule ends when ``max_time`` does)."""
    from detforge.engine.adaptive_threads import AdaptiveThreads
    from detforge.engine.callbacks import AtomicCheckpoint, CheckRunFolder, LastCheckpoint, RunArtifacts
    from detforge.engine.cpu_precision import CpuPrecisionChoice
    from detforge.engine.denormals import FlushDenormals
    from detforge.engine.memory_format import MemoryFormatChoice
    from detforge.engine.schedule import FitScheduleToTime

    callbacks: list = [
        CheckRunFolder(run_dir),
        AdaptiveThreads(threads=threads),
        FlushDenormals(),  # before the memory format and precision probes: they time steps as training runs
        MemoryFormatChoice(),
        CpuPrecisionChoice(),  # after the memory format: measured in the chosen one
        FitScheduleToTime(),
        AtomicCheckpoint(
            dirpath=str(run_dir),
            filename="best",
            monitor="val/map",
            mode="max",
            save_top_k=1,
            auto_insert_metric_name=False,
            enable_version_counter=False,
        ),
        LastCheckpoint(run_dir, every_minutes=_checkpoint_minutes(checkpoint_every_minutes)),
    ]
    if progress_bar:
        from lightning.pytorch.callbacks import RichProgressBar

        callbacks.append(RichProgressBar(leave=True))
    if artifacts:
        from detforge.engine.batch_pictures import LabelsPlot, TrainBatchPictures

        callbacks.append(RunArtifacts(run_dir))
        callbacks += [TrainBatchPictures(run_dir), LabelsPlot(run_dir)]  # train_batches.jpg, labels.png
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
