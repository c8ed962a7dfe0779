"""What the speed benchmarks share: a seeded batch of random images and boxes, and a median timer."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def make_batch(batch: int, size: int, num_classes: int, seed: int = 0):
    """``batch`` random square images (Tensor[B, 3, size, size]) and 1-7 random xyxy boxes on each."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, size, size, generator=gen)
    targets = []
    for _ in range(batch):
        n = int(torch.randint(1, 8, (1,), generator=gen))
        xy = torch.rand(n, 2, generator=gen) * size * 0.7
        wh = 16 + torch.rand(n, 2, generator=gen) * size * 0.3
        boxes = torch.cat([xy, (xy + wh).clamp(max=size)], dim=1)
        labels = torch.randint(0, num_classes, (n,), generator=gen)
        targets.append({"boxes": boxes, "labels": labels})
    return images, targets


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_times(
    fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Seconds of each call of each function over ``repeats`` rounds that call every function once, in
    turn, the order reversed every other round (ABBA): a neighbour's burst or a frequency change costs all of
    them alike, and none always runs first. Round i of every list comes from the same round."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    order = list(fns.items())
    for i in range(repeats):
        for name, fn in order if i % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def interleaved_median_times(
    fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1
) -> dict[str, float]:
    """Median seconds of each function over the rounds of :func:`interleaved_times`."""
    return {name: statistics.median(t) for name, t in interleaved_times(fns, repeats, warmup).items()}


def cpu_summary() -> str:
    """The CPU's model name, torch's CPU capability (AVX2, AVX512...) and the torch thread count, in one line."""
    from detforge.engine.memory_format import cpu_name

    return (
        f"CPU: {cpu_name()}; torch {torch.__version__}, capability {torch.backends.cpu.get_cpu_capability()}, "
        f"{torch.get_num_threads()} threads"
    )
