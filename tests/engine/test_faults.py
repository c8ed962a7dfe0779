"""Runs that are killed, resumed with nothing to resume, or cannot write their folder."""

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint

from detforge import cli
from detforge.engine.callbacks import AtomicCheckpoint, LastCheckpoint
from detforge.engine.trainer import RunError, check_run_dir_writable, default_callbacks

TINY = [
    "--model.model=null",
    "--model.backbone=test_resnet",
    "--model.fpn_channels=16",
    "--model.head_num_convs=1",
    "--model.strides=[8,16,32]",
    "--model.warmup_steps=2",
    "--data=synthetic:16",
    "--imgsz=64",
    "--batch=4",
    "--workers=0",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--trainer.limit_val_batches=1",
]


@pytest.fixture(autouse=True)
def _single_process(monkeypatch):
    for key in ("LOCAL_RANK", "TORCHELASTIC_RUN_ID", "SLURM_NTASKS", "SLURM_JOB_ID", "DETFORGE_RUN_DIR"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("DETFORGE_NUM_THREADS", str(torch.get_num_threads()))


class _Tiny(L.LightningModule):
    """4 batches an epoch; records the ``global_step`` of ``last.ckpt`` seen at the start of every batch."""

    def __init__(self, run_dir: Path | None = None):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.run_dir = run_dir
        self.saved_steps: list[int | None] = []

    def on_train_batch_start(self, batch, batch_idx):
        last = self.run_dir / "last.ckpt" if self.run_dir else None
        self.saved_steps.append(torch.load(last)["global_step"] if last and last.is_file() else None)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).sum()

    def train_dataloader(self):
        data = torch.utils.data.TensorDataset(torch.randn(16, 4))
        return torch.utils.data.DataLoader(data, batch_size=4)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _trainer(callbacks, root, **kwargs):
    kwargs.setdefault("max_epochs", 3)
    return L.Trainer(
        accelerator="cpu",
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
        check_val_every_n_epoch=9,
        **kwargs,
    )


def test_last_checkpoint_every_epoch_without_validation(tmp_path):
    model = _Tiny(tmp_path)
    _trainer([LastCheckpoint(tmp_path, every_minutes=60)], tmp_path).fit(model)
    # saved at the end of epochs 0 and 1 (steps 4, 8) though no validation ran, never inside an epoch
    assert model.saved_steps == [None] * 4 + [4] * 4 + [8] * 4
    ckpt = torch.load(tmp_path / "last.ckpt")
    assert ckpt["global_step"] == 12 and ckpt["epoch"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_last_checkpoint_inside_epochs_and_resume_mid_epoch(tmp_path):
    model = _Tiny(tmp_path)
    _trainer([LastCheckpoint(tmp_path, every_minutes=0)], tmp_path, max_steps=6).fit(model)
    assert model.saved_steps == [None, 1, 2, 3, 4, 5]  # every_minutes=0: after every step
    assert torch.load(tmp_path / "last.ckpt")["global_step"] == 6  # mid-epoch 1

    resumed = _Tiny(tmp_path)
    trainer = _trainer([LastCheckpoint(tmp_path, every_minutes=0)], tmp_path, max_epochs=2)
    with pytest.warns(UserWarning, match="not resumable"):
        trainer.fit(resumed, ckpt_path=tmp_path / "last.ckpt")
    # the step count continues and epoch 1 ends after the 2 batches it had left
    assert resumed.saved_steps == [6, 7] and trainer.global_step == 8


class _DiskFillsUp(TorchCheckpointIO):
    """Writes ``ok`` checkpoints, then half a file and ENOSPC, like a disk that filled up."""

    def __init__(self, ok: int):
        self.ok = ok

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        if self.ok <= 0:
            Path(path).write_bytes(b"PK\x03\x04 half a checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        self.ok -= 1
        super().save_checkpoint(checkpoint, path, storage_options)


def test_disk_full_is_a_run_error_and_last_good_checkpoint_stays(tmp_path):
    trainer = _trainer([LastCheckpoint(tmp_path, every_minutes=60)], tmp_path, plugins=[_DiskFillsUp(ok=1)])
    with pytest.raises(RunError, match=r"cannot write .*last\.ckpt: No space left on device"):
        trainer.fit(_Tiny())
    assert torch.load(tmp_path / "last.ckpt")["global_step"] == 4  # the epoch-0 checkpoint, intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no half-written temporary file


def test_atomic_checkpoint_replaces_in_place(tmp_path):
    _kwargs = dict(dirpath=tmp_path, filename="w", every_n_train_steps=1, enable_version_counter=False)
    cb = AtomicCheckpoint(**_kwargs)
    _trainer([cb], tmp_path, max_steps=3).fit(_Tiny())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.ckpt"]
    assert cb.best_model_path == str(tmp_path / "w.ckpt")
    assert (
        cb.state_key == ModelCheckpoint(**_kwargs).state_key
    )  # resumes runs saved by a plain ModelCheckpoint
    assert torch.load(tmp_path / "w.ckpt")["global_step"] == 3


def test_unwritable_run_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(RunError, match=r"run folder .*file/run is not writable"):
        check_run_dir_writable(blocker / "run")
    check_run_dir_writable(tmp_path / "fresh" / "run")
    assert list((tmp_path / "fresh" / "run").iterdir()) == []
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        with pytest.raises(RunError, match="Permission denied"):
            check_run_dir_writable(locked / "run")


def test_default_callbacks_write_last_atomically(tmp_path, monkeypatch):
    monkeypatch.setenv("DETFORGE_CHECKPOINT_MINUTES", "0.5")
    cbs = default_callbacks(tmp_path, progress_bar=False, artifacts=False)
    last = [c for c in cbs if isinstance(c, LastCheckpoint)]
    best = [c for c in cbs if isinstance(c, AtomicCheckpoint) and not isinstance(c, LastCheckpoint)]
    assert len(last) == 1 and last[0].every_minutes == 0.5 and last[0].dirpath == str(tmp_path)
    assert len(best) == 1 and best[0].monitor == "val/map" and not best[0].save_last
    cbs = default_callbacks(tmp_path, progress_bar=False, artifacts=False, checkpoint_every_minutes=2)
    assert [c.every_minutes for c in cbs if isinstance(c, LastCheckpoint)] == [2]
    monkeypatch.setenv("DETFORGE_CHECKPOINT_MINUTES", "soon")
    with pytest.raises(ValueError, match="DETFORGE_CHECKPOINT_MINUTES"):
        default_callbacks(tmp_path)


def test_cli_prints_one_line_for_run_errors(tmp_path, capsys):
    assert cli.main(["train", *TINY, f"--project={tmp_path}", "--name=none", "--resume=last"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err == f"detforge train: --resume last: nothing to resume, no checkpoint at {tmp_path}/none/last.ckpt"
    )

    blocker = tmp_path / "file"
    blocker.write_text("")
    assert cli.main(["train", *TINY, f"--project={blocker}", "--name=r", "--trainer.max_steps=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"detforge train: run folder {blocker}/r is not writable")
    assert not any("Traceback" in line for line in err)


@pytest.mark.slow  # a `detforge train` subprocess: ~20 s on a quiet 2-core machine
def test_kill_9_mid_run_then_resume_last(tmp_path):
    project = tmp_path / "runs"
    args = [*TINY, "--epochs=1000", f"--project={project}", "--name=k"]
    env = dict(os.environ, DETFORGE_CHECKPOINT_MINUTES="0")  # last.ckpt after every step
    proc = subprocess.Popen(
        [sys.executable, "-m", "detforge.cli", "train", *args],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    last = project / "k" / "last.ckpt"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if last.is_file() and torch.load(last, weights_only=True)["global_step"] >= 3:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    step = torch.load(last, weights_only=True)["global_step"]  # loadable whenever the kill came
    assert step >= 3
    assert cli.main(["train", *args, "--resume=last", f"--trainer.max_steps={step + 2}"]) == 0
    resumed = torch.load(last, weights_only=True)
    assert resumed["global_step"] == step + 2
    assert not [p.name for p in last.parent.iterdir() if p.name.startswith(".tmp-")]
