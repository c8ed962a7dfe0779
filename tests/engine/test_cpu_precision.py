"""bfloat16 autocast of CPU training chosen by measurement where the CPU has it natively, cached, honoured by the
training step, left to the user when the Trainer's precision is set."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from detforge.data.datamodule import detection_collate
from detforge.data.synthetic import SyntheticShapes
from detforge.engine.cpu_precision import CpuPrecisionChoice, choose_cpu_bf16, native_bf16


@pytest.fixture
def cache(measurement_cache, monkeypatch):
    monkeypatch.delenv("DETFORGE_CPU_PRECISION", raising=False)
    return measurement_cache


def test_native_bf16_reads_the_cpu_flags(tmp_path):
    (tmp_path / "zen4").write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n")
    (tmp_path / "spr").write_text("flags\t\t: fpu avx2 amx_bf16 amx_tile\n")
    (tmp_path / "zen2").write_text("flags\t\t: fpu avx2 fma\n")
    assert native_bf16(tmp_path / "zen4") and native_bf16(tmp_path / "spr")
    assert not native_bf16(tmp_path / "zen2") and not native_bf16(tmp_path / "missing")


@pytest.mark.parametrize("bf16_faster", [True, False])
def test_the_faster_precision_is_chosen_and_cached(cache, bf16_faster, tiny):
    model = tiny().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []

    def timer(probe, images, train):
        bf16 = torch.is_autocast_enabled("cpu")
        calls.append(bf16)
        assert probe is not model and train and images.shape == (2, 3, 64, 64)
        return 0.1 if bf16 == bf16_faster else 0.2

    choice, why = choose_cpu_bf16(model, (2, 3, 64, 64), timer=timer, has_bf16=True)
    assert choice is bf16_faster and "measured" in why
    assert calls == [True, False] + [False, True, True, False] * 2  # a warm-up each, two ABBA rounds
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    entry = next(iter(json.loads(cache.read_text()).values()))
    assert entry == {
        "bf16": bf16_faster,
        "bf16_s": pytest.approx(0.1 if bf16_faster else 0.2),
        "fp32_s": pytest.approx(0.2 if bf16_faster else 0.1),
    }
    # cached: no second measurement
    again, why = choose_cpu_bf16(
        model, (2, 3, 64, 64), timer=lambda *a: pytest.fail("measured twice"), has_bf16=True
    )
    assert again is bf16_faster and "measured before" in why


def test_a_model_that_fails_under_bf16_trains_in_fp32(cache, tiny):
    """An operator without a bfloat16 kernel (as torchvision's threaded RoIAlign had) must not end the run: the
    probe says why and picks float32, uncached; an error in float32 is the model's own and propagates."""
    model = tiny()

    def timer(probe, images, train):
        if torch.is_autocast_enabled("cpu"):
            raise RuntimeError(
                "roi_align_forward_kernel\n\"roi_align_forward_kernel\" not implemented for 'BFloat16'"
            )
        return 0.1

    choice, why = choose_cpu_bf16(model, (2, 3, 64, 64), timer=timer, has_bf16=True)
    assert choice is False and "fails under bfloat16 autocast" in why and "BFloat16" in why
    assert not cache.exists() or not json.loads(cache.read_text())

    def broken(probe, images, train):
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        choose_cpu_bf16(model, (2, 3, 64, 64), timer=broken, has_bf16=True)


def test_without_native_bf16_or_when_fixed_nothing_is_measured(cache, monkeypatch, tiny):
    model = tiny()
    never = lambda *a: pytest.fail("measured")  # noqa: E731
    assert choose_cpu_bf16(model, (2, 3, 64, 64), timer=never, has_bf16=False) == (
        False,
        "CPU precision fp32 (no native bfloat16 on this CPU)",
    )
    assert choose_cpu_bf16(model, (2, 3, 64, 64), mode="bf16", timer=never)[0] is True
    monkeypatch.setenv("DETFORGE_CPU_PRECISION", "fp32")
    assert choose_cpu_bf16(model, (2, 3, 64, 64), timer=never, has_bf16=True)[0] is False
    monkeypatch.setenv("DETFORGE_CPU_PRECISION", "half")
    with pytest.raises(ValueError, match="DETFORGE_CPU_PRECISION"):
        choose_cpu_bf16(model, (2, 3, 64, 64))
    with pytest.raises(ValueError, match="CPU precision"):
        CpuPrecisionChoice("fp16")


class _Data(L.LightningDataModule):
    batch_size, imgsz = 2, 32

    def train_dataloader(self):
        data = SyntheticShapes(num_images=4, image_size=32, num_classes=3, seed=0)
        return DataLoader(data, batch_size=2, collate_fn=detection_collate)


def _fit(tmp_path, mode, precision="32-true"):
    from detforge.models.detector import ObjectDetector

    torch.manual_seed(0)
    model = ObjectDetector(
        backbone="test_resnet", num_classes=3, fpn_channels=16, head_num_convs=1, strides=(8, 16, 32),
        compile_model=False, deterministic=False, imgsz=32,
    )  # fmt: skip
    seen = []

    class Spy(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(pl_module.cpu_autocast)

    choice = CpuPrecisionChoice(mode)
    trainer = L.Trainer(
        max_steps=2, accelerator="cpu", precision=precision, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, callbacks=[choice, Spy()],
        default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(model, datamodule=_Data())
    return model, choice, seen


def test_the_training_step_runs_under_autocast_when_chosen(tmp_path, monkeypatch):
    from detforge.models.detector import ObjectDetector

    dtypes = []
    original = ObjectDetector._forward_loss

    def spy(self, images, targets, detections=True):
        dtypes.append(torch.is_autocast_enabled("cpu"))
        return original(self, images, targets, detections)

    monkeypatch.setattr(ObjectDetector, "_forward_loss", spy)
    model, choice, seen = _fit(tmp_path, "bf16")
    assert choice.choice is True and seen == [True, True] and dtypes == [True, True]
    assert model.cpu_autocast is False  # after fit: validation, test and prediction in float32
    dtypes.clear()
    model, choice, seen = _fit(tmp_path, "fp32")
    assert seen == [False, False] and dtypes == [False, False]


def test_a_precision_set_on_the_trainer_is_left_alone(tmp_path):
    _, choice, seen = _fit(tmp_path, "bf16", precision="bf16-mixed")
    assert choice.choice is None and seen == [False, False]
