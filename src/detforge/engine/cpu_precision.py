"""bfloat16 autocast for CPU training where the CPU computes bfloat16 natively and it is faster for the model.

CPUs with ``avx512_bf16`` or ``amx_bf16`` (AMD Zen 4 and later, Intel Cooper Lake / Sapphire Rapids and later)
run oneDNN's convolutions in bfloat16 at up to twice the float32 speed: measured on a 2-core EPYC with
``avx512_bf16``, a training step of fcos_mobilenetv2_100 (FPN 256, 4-conv head) at 400 px took 0.61x the
float32 time and fcos_resnet18 at 320 px 0.59x, but ``detforge_n`` at 128 px took 1.41x (its small
convolutions lose to the conversions). Elsewhere bfloat16 is emulated and slower. So, like the memory
format, the choice is measured: :func:`choose_cpu_bf16` times training steps of the model with and without
``torch.autocast("cpu", torch.bfloat16)`` (a warm-up each, then ABBA order) and caches the answer beside the
memory format's, under the CPU, its capability, the thread count, the model and the input shape. Weights,
optimizer state and the loss's reductions stay float32 (autocast), as Lightning's ``bf16-mixed``.
``$DETFORGE_CPU_PRECISION`` = ``bf16`` | ``fp32`` fixes the choice; ``auto`` (the default) measures.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from detforge.engine.memory_format import (
    _batch_shape,
    cache_path,
    measure_abba,
    model_key,
    read_cache,
    time_step,
    write_cache,
)

__all__ = ["CpuPrecision", "CpuPrecisionChoice", "choose_cpu_bf16", "cpu_autocast", "native_bf16"]

CpuPrecision = Literal["auto", "bf16", "fp32"]
_ENV = "DETFORGE_CPU_PRECISION"
_CHOICES = ("auto", "bf16", "fp32")


class _Bf16Failed(Exception):
    """The training step raised under bfloat16 autocast (the message is the error's last line)."""


def native_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether the CPU has bfloat16 instructions (``avx512_bf16`` or ``amx_bf16`` among its flags; False
    where ``/proc/cpuinfo`` cannot be read)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return bool({"avx512_bf16", "amx_bf16"} & flags)
    return False


def cpu_autocast(enabled: bool):
    """``torch.autocast("cpu", torch.bfloat16)`` when ``enabled``, else a context that does nothing."""
    return torch.autocast("cpu", dtype=torch.bfloat16) if enabled else nullcontext()


def choose_cpu_bf16(
    model: nn.Module,
    images_shape: tuple[int, int, int, int],
    mode: CpuPrecision | None = None,
    timer: Callable[[nn.Module, Tensor, bool], float] | None = None,
    has_bf16: bool | None = None,
) -> tuple[bool, str]:
    """Whether training ``model`` on batches of ``images_shape`` (B, C, H, W) is faster under bfloat16
    autocast on this CPU, and why (a line for the log).

    ``mode``: "auto" measures (cached), "bf16" / "fp32" decide; None reads ``$DETFORGE_CPU_PRECISION``
    (default "auto"). Without native bfloat16 (``has_bf16``, default :func:`native_bf16`) "auto" is float32
    without measuring. The model is measured on a copy in its current memory format, so its weights,
    BatchNorm statistics and the RNG stay untouched."""
    mode = mode or os.environ.get(_ENV, "auto")
    if mode not in _CHOICES:
        raise ValueError(f"{_ENV} / CPU precision must be one of {_CHOICES}, got {mode!r}")
    if mode != "auto":
        return mode == "bf16", f"CPU precision {mode} (fixed by {_ENV} or the caller)"
    param = next(model.parameters(), None)
    if param is None or param.device.type != "cpu":
        return False, "CPU precision: not on the CPU"
    if not (native_bf16() if has_bf16 is None else has_bf16):
        return False, "CPU precision fp32 (no native bfloat16 on this CPU)"
    layout = "channels_last" if getattr(model, "channels_last", False) else "nchw"
    key = f"{model_key(model, images_shape)}|train|{layout}|bf16"
    cache = read_cache()
    if key in cache:
        entry = cache[key]
        return bool(entry["bf16"]), (
            f"CPU precision {'bf16 autocast' if entry['bf16'] else 'fp32'} (measured before on this machine: "
            f"bf16 {entry['bf16_s'] * 1e3:.0f} ms vs fp32 {entry['fp32_s'] * 1e3:.0f} ms a step)"
        )
    timer = timer or (lambda m, x, t: time_step(m, x, t, repeats=1, warmup=0))
    rng = torch.get_rng_state()
    probe = copy.deepcopy(model).train(True)
    images = torch.rand(images_shape, generator=torch.Generator().manual_seed(0))

    def run(bf16: bool) -> float:
        with cpu_autocast(bf16):
            try:
                return timer(probe, images, True)
            except (RuntimeError, NotImplementedError) as err:
                if not bf16:
                    raise
                raise _Bf16Failed(str(err).strip().splitlines()[-1][:200]) from err

    try:
        measured = measure_abba(run)  # a warm-up each, then ABBA: float32, bfloat16, bfloat16, float32
    except _Bf16Failed as err:  # an operator without a bfloat16 kernel: train in float32, say why
        run(False)  # unless the step fails in float32 too: then the error is the model's own, raised here
        torch.set_rng_state(rng)
        return False, f"CPU precision fp32 (the model's training step fails under bfloat16 autocast: {err})"
    torch.set_rng_state(rng)
    choice = measured[True] < measured[False]
    cache[key] = {"bf16": choice, "bf16_s": measured[True], "fp32_s": measured[False]}
    write_cache(cache)
    return choice, (
        f"CPU precision {'bf16 autocast' if choice else 'fp32'} (measured: bf16 {measured[True] * 1e3:.0f} ms, "
        f"fp32 {measured[False] * 1e3:.0f} ms a step; cached in {cache_path()})"
    )


class CpuPrecisionChoice(L.Callback):
    """At the start of training on the CPU, run the training steps under bfloat16 autocast when the CPU has it
    natively and it is faster for this model (:func:`choose_cpu_bf16` on a training batch's shape, after the
    memory format is chosen; one log line says what and why). Sets ``cpu_autocast`` on the LightningModule,
    which its ``training_step`` honours. Does nothing when the Trainer's ``precision`` is set (anything but
    ``32-true``: the user chose), off the CPU, or with more than one process.

    Args:
        mode: "auto" (measure, cached), "bf16" or "fp32"; None reads ``$DETFORGE_CPU_PRECISION``.
    """

    def __init__(self, mode: CpuPrecision | None = None) -> None:
        if mode is not None and mode not in _CHOICES:
            raise ValueError(f"CPU precision must be one of {_CHOICES}, got {mode!r}")
        self.mode = mode
        self.choice: bool | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not hasattr(pl_module, "cpu_autocast") or str(trainer.precision) != "32-true":
            return
        model = getattr(pl_module, "model", None)
        if model is None or trainer.world_size > 1:
            return
        shape = _batch_shape(trainer, model)
        if shape is None:
            return
        self.choice, why = choose_cpu_bf16(model, shape, mode=self.mode)
        pl_module.cpu_autocast = self.choice
        rank_zero_info(f"detforge: {why}")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.choice is not None and hasattr(pl_module, "cpu_autocast"):
            pl_module.cpu_autocast = False  # validation, test and prediction after fit run in float32
