import math

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel

from detforge.engine.ema import ExponentialMovingAverage, ema_decay_at


def test_decay_ramp():
    assert ema_decay_at(1, 0.99, 0) == 0.99
    assert ema_decay_at(0, 0.99, 10) == 0.0
    assert ema_decay_at(10, 0.99, 10) == pytest.approx(0.99 * (1 - math.exp(-1)))
    assert ema_decay_at(10_000, 0.99, 10) == pytest.approx(0.99)
    with pytest.raises(ValueError, match="decay"):
        ExponentialMovingAverage(decay=1.5)


class Snapshots(L.Callback):
    """Raw weights after every optimizer step."""

    def __init__(self):
        self.weights = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.weights.append({k: v.detach().clone() for k, v in pl_module.state_dict().items()})


def _trainer(tmp_path, steps, callbacks, **kwargs):
    return L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
        callbacks=callbacks,
        **kwargs,
    )


def test_ema_matches_manual_average(tmp_path):
    torch.manual_seed(0)
    model = BoringModel()
    snaps = Snapshots()
    ema = ExponentialMovingAverage(decay=0.9, warmup_updates=3.0)
    _trainer(tmp_path, 6, [snaps, ema], enable_checkpointing=False).fit(model)
    expected = None
    for n, weights in enumerate(snaps.weights):
        if expected is None:
            expected = {k: v.clone() for k, v in weights.items()}
            continue
        d = 0.9 * (1 - math.exp(-n / 3.0))
        expected = {k: d * expected[k] + (1 - d) * weights[k] for k in weights}
    # after fit the model holds the average
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, expected[key])
    assert not torch.equal(snaps.weights[-1]["layer.weight"], expected["layer.weight"])


def test_resume_restores_ema_optimizer_and_schedule(tmp_path):
    def run(steps, ckpt_path=None, root=tmp_path):
        torch.manual_seed(0)
        model = BoringModel()
        callbacks = [
            ExponentialMovingAverage(decay=0.8, warmup_updates=0),
            ModelCheckpoint(dirpath=root, save_last=True, every_n_train_steps=1),
        ]
        # 3 batches per epoch: the interrupted run stops at an epoch boundary, as `last.ckpt` does
        _trainer(root, steps, callbacks, limit_train_batches=3).fit(
            model, ckpt_path=ckpt_path, weights_only=True
        )
        return model

    straight = run(6, root=tmp_path / "a")
    run(3, root=tmp_path / "b")
    ckpt = torch.load(tmp_path / "b" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 3 and "current_model_state" in ckpt and "averaging_state" in ckpt
    resumed = run(6, ckpt_path=tmp_path / "b" / "last.ckpt", root=tmp_path / "b")
    for key, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value)
