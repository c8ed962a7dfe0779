"""Denormal floats flushed to zero while the Trainer runs, IEEE again afterwards, opt-out by environment."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from detforge.engine.denormals import FlushDenormals, flush_denormal_enabled
from detforge.engine.trainer import default_callbacks

TINY = 1e-39  # a float32 denormal

x86 = pytest.mark.skipif(
    not torch.set_flush_denormal(False), reason="this CPU has no flush-to-zero mode (not x86)"
)


def flushed() -> bool:
    return bool((torch.tensor([TINY]) * 1.0).item() == 0.0)


class Probe(L.LightningModule):
    """Records in every training and validation step whether denormals are flushed."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.seen: list[bool] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(flushed())
        return self.layer(batch[0]).sum()

    def validation_step(self, batch, batch_idx):
        self.seen.append(flushed())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), 0.1)


def run(probe: Probe, callback: FlushDenormals, tmp_path) -> None:
    loader = DataLoader(TensorDataset(torch.rand(4, 2)), batch_size=2)
    trainer = L.Trainer(
        max_epochs=1, callbacks=[callback], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(probe, loader, loader)


@x86
def test_training_flushes_and_restores(tmp_path):
    assert not flushed()
    probe = Probe()
    run(probe, FlushDenormals(enabled=True), tmp_path)
    assert probe.seen == [True] * 4  # 2 training + 2 validation steps
    assert not flushed()  # IEEE again after fit


@x86
def test_disabled_leaves_denormals(tmp_path):
    probe = Probe()
    run(probe, FlushDenormals(enabled=False), tmp_path)
    assert probe.seen == [False] * 4


def test_environment_switch(monkeypatch):
    monkeypatch.delenv("DETFORGE_FLUSH_DENORMAL", raising=False)
    assert flush_denormal_enabled() and FlushDenormals().enabled
    monkeypatch.setenv("DETFORGE_FLUSH_DENORMAL", "0")
    assert not flush_denormal_enabled() and not FlushDenormals().enabled
    monkeypatch.setenv("DETFORGE_FLUSH_DENORMAL", "maybe")
    with pytest.raises(ValueError, match="DETFORGE_FLUSH_DENORMAL"):
        flush_denormal_enabled()


def test_the_default_callbacks_flush(tmp_path):
    assert any(isinstance(c, FlushDenormals) for c in default_callbacks(tmp_path, progress_bar=False))
