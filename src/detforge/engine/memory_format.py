"""Channels-last or NCHW, chosen on the machine at hand: measured once per machine, model and input shape, cached.

Channels-last convolutions win on CPUs with AVX-512 / AMX and on recent GPUs; on other CPUs (AVX2-only
EPYCs, older laptops) and for some models NCHW is as fast or faster. Instead of a rule verified on two CPU
kinds, :func:`choose_channels_last` times a few steps of the model itself in both formats (an untimed warm-up
each, then timed steps in ABBA order, twice where a step is cheap) and keeps the faster on average, and the
answer is cached in ``~/.cache/detforge/memory_format.json`` (``$DETFORGE_CACHE_DIR``) under
the CPU, its capability, the thread count, the model and the input shape, so the measurement is paid once.
``$DETFORGE_MEMORY_FORMAT`` = ``channels_last`` | ``nchw`` fixes the choice; ``auto`` (the default) measures.

A model takes part when it has a boolean ``channels_last`` attribute its ``forward`` honours (FCOS, YOLOX,
CenterNet and the other pyramid detectors); :func:`set_channels_last` switches it. A pyramid detector's head
(``channels_last_head``) is then measured on its own, the rest of the model in the chosen format
(:func:`choose_head_channels_last`): the best split is not always the same for both (with AVX2 kernels the
backbone of the benchmarked FCOS runs faster channels-last and its GroupNorm head faster in NCHW).
"""

from __future__ import annotations

import copy
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

__all__ = [
    "MemoryFormatChoice",
    "cache_path",
    "cpu_name",
    "choose_channels_last",
    "choose_head_channels_last",
    "choose_memory_formats",
    "machine_key",
    "measure_abba",
    "model_key",
    "read_cache",
    "set_channels_last",
    "time_step",
    "write_cache",
]

MemoryFormat = Literal["auto", "channels_last", "nchw"]
_ENV = "DETFORGE_MEMORY_FORMAT"
_FORMATS = ("auto", "channels_last", "nchw")
# When the two warm-up steps together cost more than this (seconds), one ABBA round is timed, not two: at 400 px
# a MobileNetV2-FPN-256 step takes ~6 s, and 16 passes used to cost a 10-minute run 90 s of its budget (now 6).
_SECOND_ROUND_BELOW_S = 2.0
_ABBA = (False, True, True, False)  # NCHW, channels-last, channels-last, NCHW


def cache_path() -> Path:
    """``$DETFORGE_CACHE_DIR/memory_format.json`` (default ``~/.cache/detforge``)."""
    root = os.environ.get("DETFORGE_CACHE_DIR") or Path.home() / ".cache" / "detforge"
    return Path(root) / "memory_format.json"


def read_cache() -> dict[str, Any]:
    """The cached measurements (empty where the file is missing or unreadable)."""
    path = cache_path()
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def write_cache(cache: dict[str, Any]) -> None:
    """Replace the cache file atomically; a read-only home only means measuring again next time."""
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache, indent=1))
        os.replace(tmp, path)
    except OSError:
        pass


def cpu_name() -> str:
    """The CPU model name (``/proc/cpuinfo``; the platform's processor string elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_key() -> str:
    """The CPU model, its kernel capability (``AVX2``, ``AVX512``, ...) and the intra-op thread count."""
    return f"{cpu_name()}|{torch.backends.cpu.get_cpu_capability()}|{torch.get_num_threads()} threads"


def _format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


def set_channels_last(model: nn.Module, channels_last: bool, head: bool | None = None) -> None:
    """Switch a model with a ``channels_last`` flag to that memory format (weights and inputs). A model with a
    ``channels_last_head`` flag (the pyramid detectors) runs its ``head`` in ``head``'s format (None: the
    model's)."""
    model.channels_last = bool(channels_last)
    model.to(memory_format=_format(channels_last))
    if isinstance(getattr(model, "channels_last_head", None), bool):
        model.channels_last_head = bool(channels_last if head is None else head)
        model.head.to(memory_format=_format(model.channels_last_head))


def _tensors(value: Any) -> list[Tensor]:
    if isinstance(value, Tensor):
        return [value] if value.is_floating_point() else []
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    if isinstance(value, list | tuple):
        return [t for v in value for t in _tensors(v)]
    return []


def time_step(model: nn.Module, images: Tensor, train: bool, repeats: int = 3, warmup: int = 1) -> float:
    """Median seconds of one forward (``train``: forward + backward of the outputs' sum) of ``images``
    (Tensor[B, C, H, W])."""
    times = []
    for i in range(warmup + repeats):
        start = time.perf_counter()
        if train:
            outputs = model(images)
            sum(t.float().sum() for t in _tensors(outputs)).backward()
        else:
            with torch.no_grad():
                model(images)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_abba(run: Callable[[bool], float]) -> dict[bool, float]:
    """Mean seconds of ``run(False)`` and ``run(True)`` (one step each way: NCHW / channels-last, float32 /
    bfloat16): an untimed warm-up of each (allocator, kernel choice), then timed steps in ABBA order, so a
    steady drift (a CPU warming up, a neighbour starting or leaving) costs both alike and each has one step
    right after a switch; a second ABBA round where the warm-ups took under ``_SECOND_ROUND_BELOW_S``."""
    warmup = run(True) + run(False)
    samples: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(1 if warmup >= _SECOND_ROUND_BELOW_S else 2):
        for flag in _ABBA:
            samples[flag].append(run(flag))
    return {flag: statistics.mean(times) for flag, times in samples.items()}


def model_key(model: nn.Module, images_shape: tuple[int, ...]) -> str:
    """The machine, the model (registered name and parameter count) and the input shape: a cache key's stem."""
    name = getattr(model, "registry_name", None) or type(model).__name__
    size = sum(p.numel() for p in model.parameters())
    return f"{machine_key()}|{name}:{size}|{tuple(images_shape)}"


def _decided(model: nn.Module, mode: MemoryFormat | None, what: str) -> tuple[bool, str] | None:
    """The answer (and its log line) when nothing is to be measured: ``mode`` (None: ``$DETFORGE_MEMORY_FORMAT``,
    default "auto") fixes it, or the model is not on the CPU (its own ``channels_last`` setting); else None."""
    mode = mode or os.environ.get(_ENV, "auto")
    if mode not in _FORMATS:
        raise ValueError(f"{_ENV} / memory format must be one of {_FORMATS}, got {mode!r}")
    if mode != "auto":
        return mode == "channels_last", f"{what} {mode} (fixed by {_ENV} or the caller)"
    param = next(model.parameters(), None)
    if param is None or param.device.type != "cpu":
        return bool(getattr(model, "channels_last", False)), f"{what}: the model's own (not on the CPU)"
    return None


def _probe(model: nn.Module, images_shape: tuple[int, ...], train: bool) -> tuple[nn.Module, Tensor]:
    """A copy of ``model`` to time (in train or eval mode) and a seeded batch of ``images_shape`` for it."""
    return copy.deepcopy(model).train(train), torch.rand(
        images_shape, generator=torch.Generator().manual_seed(0)
    )


def _one_step(model: nn.Module, inputs: Any, train: bool) -> float:
    """Seconds of one step, no warm-up (:func:`measure_abba` warms up itself): one ABBA sample."""
    return time_step(model, inputs, train, repeats=1, warmup=0)


def choose_channels_last(
    model: nn.Module,
    images_shape: tuple[int, int, int, int],
    train: bool = True,
    mode: MemoryFormat | None = None,
    timer: Callable[[nn.Module, Tensor, bool], float] | None = None,
) -> tuple[bool, str]:
    """Whether ``model`` runs faster in channels-last than NCHW here, and why (a line for the log).

    ``images_shape``: (B, C, H, W) of a training (``train``) or inference batch. ``mode``: "auto" measures
    (cached), "channels_last" / "nchw" decide; None reads ``$DETFORGE_MEMORY_FORMAT`` (default "auto"). The
    model is measured on a copy, so its weights, BatchNorm statistics, gradients and the RNG stay untouched.
    Off the CPU the answer is the model's own setting (channels-last, which suits recent GPUs)."""
    decided = _decided(model, mode, "memory format")
    if decided is not None:
        return decided
    key = f"{model_key(model, images_shape)}|{'train' if train else 'eval'}"
    timer = timer or _one_step

    def measure() -> dict[bool, float]:
        probe, images = _probe(model, images_shape, train)

        def run(fmt: bool) -> float:
            set_channels_last(probe, fmt)
            return timer(probe, images, train)

        return measure_abba(run)

    return _cached_choice(key, "memory format", measure)


class _FormattedHead(nn.Module):
    """``head`` called on its input features converted to the head's memory format, as a pyramid detector
    whose head runs in the other format than its features does (the conversion is part of the cost)."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head
        self.channels_last = False

    def forward(self, features: list[Tensor]) -> Any:
        return self.head([f.contiguous(memory_format=_format(self.channels_last)) for f in features])


def choose_head_channels_last(
    model: nn.Module,
    images_shape: tuple[int, int, int, int],
    train: bool = True,
    mode: MemoryFormat | None = None,
    timer: Callable[[nn.Module, Any, bool], float] | None = None,
) -> tuple[bool | None, str]:
    """Whether the head of a pyramid detector (``features`` then ``head`` on the list of feature maps, with a
    ``channels_last_head`` flag) runs faster in channels-last than NCHW here, the rest of the model staying in
    its current format; and why. None (and "") for a model without such a head.

    Measured like :func:`choose_channels_last` (a copy, ABBA order, cached under the model, the input shape
    and the rest's format), timing the head alone on the features of one batch: its forward, and for
    ``train`` its backward into the features too. ``mode`` "channels_last" / "nchw" fixes the head as well."""
    if not isinstance(getattr(model, "channels_last_head", None), bool):
        return None, ""
    decided = _decided(model, mode, "head memory format")
    if decided is not None:
        return decided
    rest = "channels_last" if model.channels_last else "nchw"
    key = f"{model_key(model, images_shape)}|{'train' if train else 'eval'}|head after {rest}"
    timer = timer or _one_step

    def measure() -> dict[bool, float]:
        probe, images = _probe(model, images_shape, train)
        with torch.no_grad():
            pyramid = probe.features(probe.in_memory_format(images))
        features = [f.detach() for f in pyramid]  # list of Tensor[B, C, H_l, W_l]
        features = [f.requires_grad_(train) for f in features]  # training: the head's backward reaches them
        head = _FormattedHead(probe.head)

        def run(fmt: bool) -> float:
            head.channels_last = fmt
            head.head.to(memory_format=_format(fmt))
            return timer(head, features, train)

        return measure_abba(run)

    return _cached_choice(key, "head memory format", measure)


def _cached_choice(key: str, what: str, measure: Callable[[], dict[bool, float]]) -> tuple[bool, str]:
    """The cached answer under ``key``, or ``measure()`` (seconds by format, True: channels-last) with the RNG
    restored after it, cached; and the log line saying ``what`` was chosen and why."""
    path = cache_path()
    cache = read_cache()
    if key in cache:
        entry = cache[key]
        return bool(entry["channels_last"]), (
            f"{what} {'channels_last' if entry['channels_last'] else 'nchw'} "
            f"(measured before on this machine: {entry['channels_last_s'] * 1e3:.0f} ms vs NCHW "
            f"{entry['nchw_s'] * 1e3:.0f} ms a step)"
        )
    rng = torch.get_rng_state()
    measured = measure()
    torch.set_rng_state(rng)
    choice = measured[True] <= measured[False]
    cache[key] = {"channels_last": choice, "channels_last_s": measured[True], "nchw_s": measured[False]}
    write_cache(cache)
    return choice, (
        f"{what} {'channels_last' if choice else 'nchw'} (measured: channels-last "
        f"{measured[True] * 1e3:.0f} ms, NCHW {measured[False] * 1e3:.0f} ms a step; cached in {path})"
    )


def choose_memory_formats(
    model: nn.Module,
    images_shape: tuple[int, int, int, int],
    train: bool = False,
    mode: MemoryFormat | None = None,
) -> list[str]:
    """Put ``model`` in the faster memory format for training (``train``) or inference batches of
    ``images_shape`` here (:func:`choose_channels_last`), then a pyramid detector's head in its own
    (:func:`choose_head_channels_last`); returns the log lines saying what and why (none for a model without a
    ``channels_last`` flag)."""
    if not isinstance(getattr(model, "channels_last", None), bool):
        return []
    body, why = choose_channels_last(model, images_shape, train=train, mode=mode)
    set_channels_last(model, body)
    lines = [why]
    head, why = choose_head_channels_last(model, images_shape, train=train, mode=mode)
    if head is not None:
        set_channels_last(model, body, head=head)
        lines.append(why)
    return lines


class MemoryFormatChoice(L.Callback):
    """At the start of training, put the model in the faster memory format for this machine
    (:func:`choose_channels_last` on a training batch's shape), then a pyramid detector's head in its own
    faster one (:func:`choose_head_channels_last`); one log line each says what and why.

    Args:
        mode: "auto" (measure, cached), "channels_last" or "nchw"; None reads ``$DETFORGE_MEMORY_FORMAT``.
    """

    def __init__(self, mode: MemoryFormat | None = None) -> None:
        self.mode = mode
        self.choice: bool | None = None
        self.head_choice: bool | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        model = getattr(pl_module, "model", None)
        if model is None or not isinstance(getattr(model, "channels_last", None), bool):
            return
        if trainer.world_size > 1:  # DDP has checked the parameters' strides across ranks: keep them
            return
        shape = _batch_shape(trainer, model)
        if shape is None:
            return
        for line in choose_memory_formats(model, shape, train=True, mode=self.mode):
            rank_zero_info(f"detforge: {line}")
        self.choice, self.head_choice = model.channels_last, getattr(model, "channels_last_head", None)


def _batch_shape(trainer: L.Trainer, model: nn.Module) -> tuple[int, int, int, int] | None:
    """(B, C, H, W) of a training batch: the data module's batch size and ``imgsz``."""
    dm = getattr(trainer, "datamodule", None)
    batch = getattr(dm, "batch_size", None)
    imgsz = getattr(dm, "imgsz", None)
    if batch is None or imgsz is None:
        return None
    h, w = (imgsz, imgsz) if isinstance(imgsz, int) else tuple(imgsz)
    return int(batch), int(getattr(model, "in_chans", 3)), int(h), int(w)
