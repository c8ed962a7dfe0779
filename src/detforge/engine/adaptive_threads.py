"""Adapting the intra-op thread count while training runs: :class:`ThreadController` (a pure state machine,
step times in, thread counts out) and :class:`AdaptiveThreads` (the Lightning callback that times training
steps and drives it). The CPU counting lives in :mod:`detforge.engine.threads`.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from detforge.engine import threads as _threads

__all__ = ["AdaptiveThreads", "Decision", "ThreadController", "ThreadPolicy"]


# ------------------------------------------------------------------------------------ state machine


@dataclass(frozen=True)
class ThreadPolicy:
    """Settings of ``ThreadController`` (times are seconds of summed step time, not wall clock).

    Args:
        warmup: steps ignored at the start (first-step allocations, caches).
        window: steps per measurement; a measurement is their median.
        settle: steps ignored after every change of the thread count.
        degrade: a measurement this many times slower than the reference at the same count starts a trial
            of fewer threads.
        margin: a trial count is kept only when its measurement is faster by this fraction.
        abort: a single step of a trial this many times slower than the measurement before the trial ends
            the trial at once: a probe of all threads beside a busy neighbour (2.9x slower on a 2-core
            machine) then costs one step, not a window of them.
        probe_every_s: step time between probes of another count (up when below the maximum, else down);
            the first probe comes right after the first measurement.
        max_probe_every_s: probes that fail double the interval, up to this.
        min_probe_gap_steps: at least this many steps between probes whatever their duration: a probe
            costs ``settle + window`` steps, so with steps of seconds (a large input) a gap in seconds alone
            would spend a large part of the run probing.
        quiet_neighbours: where the neighbour load is known (``observe(..., neighbours=)``), a window whose
            other processes kept fewer CPUs than this busy is quiet: a slower step there is this run's own
            variance (data, garbage collection, the clock), not a reason to try fewer threads.
        probe_up_free: where the neighbour load is known, a probe of more threads is made only when at least
            this many CPUs are free beside the threads in use (a probe of all threads beside a busy
            neighbour costs seconds and tells nothing new).
    """

    warmup: int = 2
    window: int = 5
    settle: int = 1
    degrade: float = (
        1.5  # a shared 2-core VM's quiet step times wander by 1.25-1.35x; a busy neighbour costs 2.8x
    )
    margin: float = 0.05
    abort: float = 1.5
    probe_every_s: float = 30.0
    max_probe_every_s: float = 120.0
    min_probe_gap_steps: int = 60
    quiet_neighbours: float = 0.5
    probe_up_free: float = 0.5

    def __post_init__(self) -> None:
        if self.window < 1 or self.warmup < 0 or self.settle < 0 or self.min_probe_gap_steps < 0:
            raise ValueError("window must be >= 1, warmup, settle and min_probe_gap_steps >= 0")
        if self.degrade <= 1.0 or not 0.0 <= self.margin < 1.0 or self.abort <= 1.0:
            raise ValueError("degrade and abort must be > 1 and margin in [0, 1)")
        if self.probe_every_s <= 0 or self.max_probe_every_s < self.probe_every_s:
            raise ValueError("probe_every_s must be > 0 and <= max_probe_every_s")
        if self.quiet_neighbours < 0 or self.probe_up_free < 0:
            raise ValueError("quiet_neighbours and probe_up_free must be >= 0")


@dataclass(frozen=True)
class Decision:
    """What the controller decided after a measurement: the thread count to run with and why."""

    threads: int
    reason: str


Phase = Literal["warmup", "measure", "trial"]


class ThreadController:
    """Step times in, thread counts out; no clocks, no torch (unit-testable with made-up timings).

    Feed ``observe(seconds)`` the duration of every training step (and, where known, the CPUs other
    processes kept busy meanwhile: ``NeighbourLoad``). It measures the median of ``window`` steps; when a
    measurement is ``degrade`` times slower than the reference at the same count (and, with a known load,
    a neighbour is busy), or when a probe is due (a probe up only when CPUs are free), it tries another
    count (fewer threads: ``ceil(n / 2)``; more: ``min(max, 2n)``) for one measurement, keeps it if it is
    faster by ``margin`` (and then tries the next count in that direction), otherwise goes back. ``observe``
    returns a ``Decision`` whenever it changes the count or settles a trial.

    Args:
        max_threads: the most threads to use (the available CPUs).
        start: the count to start with (default ``max_threads``).
        min_threads: the fewest.
        policy: the ``ThreadPolicy``.
    """

    def __init__(
        self,
        max_threads: int,
        *,
        start: int | None = None,
        min_threads: int = 1,
        policy: ThreadPolicy | None = None,
    ) -> None:
        if not 1 <= min_threads <= max_threads:
            raise ValueError(f"need 1 <= min_threads <= max_threads, got {min_threads}, {max_threads}")
        self.max_threads = max_threads
        self.min_threads = min_threads
        self.policy = policy or ThreadPolicy()
        self.threads = max_threads if start is None else min(max(start, min_threads), max_threads)
        self.phase: Phase = "warmup"
        self.reference: float | None = None  # the median step time at `threads` we compare against
        self.history: list[Decision] = []
        self._skip = self.policy.warmup
        self._samples: list[float] = []
        self._loads: list[float | None] = []  # neighbour load of each sample (None: unknown)
        self._trial_from: tuple[int, float] | None = None  # (threads, median) before the trial
        self._trial_kind = ""
        self._since_probe = math.inf  # probe right after the first measurement
        self._steps_since_probe = math.inf
        self._probe_every = self.policy.probe_every_s

    # candidates
    def _lower(self, n: int) -> int | None:
        lower = max(self.min_threads, n - n // 2)
        return lower if lower < n else None

    def _higher(self, n: int) -> int | None:
        higher = min(self.max_threads, 2 * n)
        return higher if higher > n else None

    def observe(self, seconds: float, neighbours: float | None = None) -> Decision | None:
        """Record one step's duration (and the CPUs other processes kept busy meanwhile, None where
        unknown); a ``Decision`` when the count changes or a trial is settled."""
        self._since_probe += seconds
        self._steps_since_probe += 1
        if self._skip > 0:
            self._skip -= 1
            return None
        self._samples.append(float(seconds))
        self._loads.append(neighbours)
        if self.phase == "trial" and self._trial_from and seconds > self._trial_from[1] * self.policy.abort:
            self._samples.clear()
            self._loads.clear()
            return self._settle_trial(float(seconds))  # clearly slower: no need for a whole window
        if len(self._samples) < self.policy.window:
            return None
        median = statistics.median(self._samples)
        known = [x for x in self._loads if x is not None]
        load = statistics.fmean(known) if len(known) == len(self._loads) else None
        self._samples.clear()
        self._loads.clear()
        if self.phase == "trial":
            return self._settle_trial(median)
        self.phase = "measure"
        return self._measured(median, load)

    def _measured(self, median: float, load: float | None = None) -> Decision | None:
        n = self.threads
        if self.reference is not None and median > self.reference * self.policy.degrade:
            lower = self._lower(n)
            if lower is None:
                self.reference = median  # nothing lower to try: this is the new normal
                return None
            if load is None or load >= self.policy.quiet_neighbours:
                why = f"step time rose from {_ms(self.reference)} to {_ms(median)} at {n} threads"
                if load is not None:
                    why += f" beside {load:.1f} busy CPUs"
                return self._start_trial(lower, median, "degraded", why)
            # nobody else is busy: this run's own variance; keep the reference, probes still come
        elif self.reference is None or median < self.reference:
            self.reference = median
        if (
            self._since_probe >= self._probe_every
            and self._steps_since_probe >= self.policy.min_probe_gap_steps
        ):
            target = self._higher(n) if n < self.max_threads else self._lower(n)
            busy = target is not None and target > n and load is not None
            if busy and self.max_threads - n - load < self.policy.probe_up_free:
                return None  # no free CPU to grow into: look again after the next window
            if target is not None:
                why = f"probe: {_ms(median)} at {n} threads"
                return self._start_trial(target, median, "probe", why)
        return None

    def _start_trial(self, target: int, median: float, kind: str, why: str) -> Decision:
        self._trial_from = (self.threads, median)
        self._trial_kind = kind
        self._since_probe = 0.0
        self._steps_since_probe = 0
        self.threads = target
        self.phase = "trial"
        self._skip = self.policy.settle
        return self._decide(f"{why}; trying {target}")

    def _settle_trial(self, median: float) -> Decision:
        assert self._trial_from is not None
        old_n, old_median = self._trial_from
        new_n = self.threads
        self._skip = self.policy.settle
        if median < old_median * (1.0 - self.policy.margin):
            self.reference = median
            self._probe_every = self.policy.probe_every_s
            nxt = self._lower(new_n) if new_n < old_n else self._higher(new_n)
            why = f"{new_n} threads {_ms(median)} beat {old_n} threads {_ms(old_median)}: keeping {new_n}"
            if nxt is not None:
                return self._start_trial(nxt, median, self._trial_kind, why)
            self.phase, self._trial_from = "measure", None
            return self._decide(why)
        # not faster: go back; the measurement before the trial is the reference now (no thrashing)
        self.threads = old_n
        self.reference = old_median
        self.phase, self._trial_from = "measure", None
        if self._trial_kind == "probe":
            self._probe_every = min(2 * self._probe_every, self.policy.max_probe_every_s)
        return self._decide(
            f"{new_n} threads {_ms(median)} did not beat {old_n} threads {_ms(old_median)}: back to {old_n}"
        )

    def _decide(self, reason: str) -> Decision:
        decision = Decision(self.threads, reason)
        self.history.append(decision)
        return decision


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


# ---------------------------------------------------------------------------------------- callback


class AdaptiveThreads(L.Callback):
    """Keep PyTorch's intra-op thread count fitted to the CPUs it really gets, while training runs.

    At the start of ``fit`` it takes the available CPUs (``available_cpus()``) less those other processes
    keep busy (``NeighbourLoad``, over a tenth of a second). On the CPU it then times every training step
    (``on_train_batch_start`` -> ``on_train_batch_end``, wall clock), reads the neighbours' load beside it,
    and lets a ``ThreadController`` lower the count when steps slow down beside a busy neighbour and probe
    back up when CPUs are free again (on CPU DDP, where the ranks share the machine, step times only).
    Every change is logged in one line. On an accelerator, or with a fixed count, it only sets the count.

    Args:
        threads: ``"auto"`` (adapt; ``$DETFORGE_NUM_THREADS=N`` fixes it at N) or a fixed count.
        policy: the controller's ``ThreadPolicy``.
        restore: put back the thread count found at the start when ``fit`` ends.
    """

    def __init__(
        self,
        threads: int | Literal["auto"] = "auto",
        policy: ThreadPolicy | None = None,
        restore: bool = True,
    ) -> None:
        if threads != "auto" and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be a positive int or 'auto', got {threads!r}")
        self.threads = threads
        self.policy = policy or ThreadPolicy()
        self.restore = restore
        self.controller: ThreadController | None = None
        self.load: _threads.NeighbourLoad | None = None  # set by start(); None: step times only
        self._original: int | None = None
        self._t0: float | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._original = torch.get_num_threads()
        fixed = _threads.fixed_threads(self.threads)
        if fixed is not None:
            torch.set_num_threads(fixed)
            why = "threads option" if self.threads != "auto" else f"${_threads.ENV_VAR}"
            rank_zero_info(f"torch threads: {fixed} (fixed by {why}; not adapting)")
            return
        count = _threads._auto_threads()
        on_cpu = getattr(trainer.strategy.root_device, "type", "cpu") == "cpu"
        if on_cpu and trainer.num_devices > 1:  # CPU processes of one machine share its CPUs
            count = max(1, count // trainer.num_devices)
        if on_cpu and count > 1:  # CPU DDP ranks are each other's neighbours by design: step times only
            self.start(count, measure_neighbours=trainer.num_devices == 1)
        else:
            torch.set_num_threads(count)
            rank_zero_info(f"torch threads: {count} (available CPUs)")

    def start(self, count: int, settle_s: float = 0.1, measure_neighbours: bool = True) -> int:
        """Start adapting with at most ``count`` threads: begin with the CPUs that other processes leave free
        (their load measured over ``settle_s`` seconds; all ``count`` where it cannot be measured or
        ``measure_neighbours`` is off), set that count and return it."""
        self.load = _threads.NeighbourLoad() if measure_neighbours else None
        load = None
        if self.load is not None and self.load.enabled and settle_s > 0:
            time.sleep(settle_s)
            load = self.load.sample()
        start = count if load is None else max(1, min(count, math.floor(count - load + 0.5)))
        self.controller = ThreadController(count, start=start, policy=self.policy)
        torch.set_num_threads(start)
        if start < count:
            why = f"{load:.1f} of {count} available CPUs busy with other processes; adapting to step times"
        else:
            why = "available CPUs; adapting to step times"
        rank_zero_info(f"torch threads: {start} ({why})")
        return start

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self.controller is not None:
            self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self.controller is None or self._t0 is None:
            return
        self.step(time.perf_counter() - self._t0)
        self._t0 = None

    def step(self, seconds: float) -> Decision | None:
        """Feed one step time to the controller and apply its decision."""
        assert self.controller is not None
        decision = self.controller.observe(seconds, None if self.load is None else self.load.sample())
        if decision is None:
            return None
        if torch.get_num_threads() != decision.threads:
            torch.set_num_threads(decision.threads)
        rank_zero_info(f"torch threads: {decision.threads} ({decision.reason})")
        return decision

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and self.restore and self._original is not None:
            torch.set_num_threads(self._original)
        self._original = None
