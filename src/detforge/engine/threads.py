"""How many intra-op threads PyTorch uses, chosen for the CPUs this process really has.

On a small machine shared with other busy processes, OpenMP threads that wait for a descheduled sibling
turn every operator into a wait: measured on a 2-core EPYC, ``detforge_n`` took 274 ms a step with 2
threads on a quiet machine but 777 ms with one busy single-threaded process beside it, where 1 thread
took 310 ms. So:

- ``available_cpus()``: the CPUs this process may run on (affinity mask, cgroup v2 ``cpu.max`` / v1
  ``cpu.cfs_quota_us`` quota), not ``os.cpu_count()``.
- ``configure_threads()``: set a fixed count once (``DETFORGE_NUM_THREADS`` or the available CPUs), for
  commands that do not train (predict, bench, val).
- ``ThreadController`` (:mod:`detforge.engine.adaptive_threads`): a pure state machine, step times in, thread counts out: it lowers the count when
  step time degrades, keeps the lower count only when it is measurably faster, and probes back up from time
  to time (with back-off) so it returns to all threads when the neighbour is gone.
- ``AdaptiveThreads`` (same module): the Lightning callback timing training steps and driving the controller.
- ``NeighbourLoad``: how many of this process's CPUs other processes keep busy (``/proc/stat`` less this
  process and its children), which tells the controller whether a slow step has a neighbour behind it.

``DETFORGE_NUM_THREADS=N`` fixes the count at N and turns adaptation off.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch

__all__ = [
    "NeighbourLoad",
    "available_cpus",
    "cgroup_cpu_limit",
    "chosen_threads",
    "configure_threads",
    "fixed_threads",
]

log = logging.getLogger(__name__)

ENV_VAR = "DETFORGE_NUM_THREADS"
_CGROUP_ROOT = Path("/sys/fs/cgroup")
_PROC_CGROUP = Path("/proc/self/cgroup")


# --------------------------------------------------------------------------------------------- CPUs


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _ancestors(root: Path, rel: str) -> list[Path]:
    """``root/rel`` and every folder above it up to ``root`` (limits of parent cgroups apply too)."""
    parts = [p for p in rel.strip("/").split("/") if p]
    return [root.joinpath(*parts[:i]) for i in range(len(parts), -1, -1)]


def _v2_quota(folder: Path) -> float | None:
    text = _read(folder / "cpu.max")  # "max 100000" or "150000 100000"
    if not text:
        return None
    fields = text.split()
    if len(fields) != 2 or fields[0] == "max":
        return None
    try:
        quota, period = int(fields[0]), int(fields[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _v1_quota(folder: Path) -> float | None:
    quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
    try:
        q, p = int(quota or "-1"), int(period or "0")
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def cgroup_cpu_limit(root: str | Path = _CGROUP_ROOT, proc_cgroup: str | Path = _PROC_CGROUP) -> float | None:
    """The CPU quota of this process's cgroup in CPUs (``1.5`` for ``cpu.max = 150000 100000``), the
    smallest along the cgroup and its parents; None without a quota. Reads cgroup v2 (``0::/path`` in
    ``/proc/self/cgroup``, ``cpu.max``) and v1 (the ``cpu`` controller, ``cpu.cfs_quota_us`` /
    ``cpu.cfs_period_us``)."""
    root = Path(root)
    v2_rel, v1_rel = None, None
    for line in (_read(Path(proc_cgroup)) or "").splitlines():
        hier, _, rest = line.partition(":")
        controllers, _, rel = rest.partition(":")
        if hier == "0" and controllers == "":
            v2_rel = rel
        elif "cpu" in controllers.split(","):
            v1_rel = rel
    limits: list[float] = []
    if v2_rel is not None:
        limits += [q for f in _ancestors(root, v2_rel) if (q := _v2_quota(f)) is not None]
    if v1_rel is not None:
        for mount in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
            base = root / mount
            if base.is_dir():
                folders = _ancestors(base, v1_rel)
                if v1_rel.strip("/"):  # inside a container the cgroup folder is often mounted as the root
                    folders.append(base)
                limits += [q for f in folders if (q := _v1_quota(f)) is not None]
                break
    return min(limits) if limits else None


def available_cpus(root: str | Path = _CGROUP_ROOT, proc_cgroup: str | Path = _PROC_CGROUP) -> int:
    """The CPUs this process can use: its affinity mask (``os.sched_getaffinity``; ``os.cpu_count()`` where
    that does not exist), capped by the cgroup CPU quota (rounded down, at least 1)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_limit(root, proc_cgroup)
    if quota is not None:
        cpus = min(cpus, max(1, math.floor(quota + 1e-6)))
    return max(1, cpus)


def fixed_threads(threads: int | Literal["auto"] = "auto") -> int | None:
    """The fixed thread count asked for, or None to adapt: an int ``threads`` wins, then
    ``$DETFORGE_NUM_THREADS`` (an int or ``auto``); ``"auto"`` with neither set is None."""
    if threads != "auto":
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be a positive int or 'auto', got {threads!r}")
        return threads
    env = os.environ.get(ENV_VAR, "").strip()
    if not env or env.lower() == "auto":
        return None
    try:
        value = int(env)
    except ValueError:
        raise ValueError(f"${ENV_VAR} must be a positive int or 'auto', got {env!r}") from None
    if value < 1:
        raise ValueError(f"${ENV_VAR} must be a positive int or 'auto', got {env!r}")
    return value


def _auto_threads() -> int:
    """All available CPUs, capped by ``$OMP_NUM_THREADS`` when the user set it."""
    cpus = available_cpus()
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) > 0:
        cpus = min(cpus, int(omp))
    return cpus


def chosen_threads(threads: int | Literal["auto"] = "auto") -> int:
    """The count :func:`configure_threads` sets, without setting it: ``threads`` if an int, else
    ``$DETFORGE_NUM_THREADS``, else the available CPUs (capped by ``$OMP_NUM_THREADS``); what onnxruntime
    sessions use for their intra-op threads (:mod:`detforge.engines`)."""
    fixed = fixed_threads(threads)
    return fixed if fixed is not None else _auto_threads()


def configure_threads(threads: int | Literal["auto"] = "auto") -> int:
    """Set ``torch.set_num_threads`` once for a command that does not train: ``threads`` if an int, else
    ``$DETFORGE_NUM_THREADS``, else the available CPUs (``available_cpus()``, capped by ``$OMP_NUM_THREADS``).
    Returns the count set and logs it in one line."""
    fixed = fixed_threads(threads)
    count = chosen_threads(threads)
    source = "fixed" if threads != "auto" else (f"${ENV_VAR}" if fixed is not None else "available CPUs")
    torch.set_num_threads(count)
    log.info("torch threads: %d (%s)", count, source)
    return count


# ------------------------------------------------------------------------------------ neighbour load

_PROC = Path("/proc")
_BUSY_FIELDS = (0, 1, 2, 5, 6, 7)  # user nice system irq softirq steal (guest is inside user)


class NeighbourLoad:
    """CPUs kept busy by other processes on the CPUs this process may use, averaged between two reads.

    Busy time of the affinity CPUs from ``/proc/stat`` (steal included: a hypervisor neighbour) less the CPU
    time of this process (all its threads) and its child processes (DataLoader workers), over the wall
    time between two :meth:`sample` calls. Linux only: ``sample`` returns None where ``/proc`` cannot be
    read, and always when a cgroup quota is smaller than the affinity set (the CPUs' busy time then says
    nothing about the share this process gets).

    Args:
        proc: the proc file system (a folder, for tests).
        cpus: the CPU ids to count (default: the affinity mask).
        clock: wall-clock seconds (default ``time.monotonic``).
        own_seconds: CPU seconds of this process and its children (default: read from ``proc``).
    """

    def __init__(
        self,
        proc: str | Path = _PROC,
        cpus: set[int] | None = None,
        clock: Callable[[], float] | None = None,
        own_seconds: Callable[[], float] | None = None,
    ) -> None:
        self.proc = Path(proc)
        try:
            affinity = set(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            affinity = set(range(os.cpu_count() or 1))
        self.cpus = affinity if cpus is None else set(cpus)
        quota = cgroup_cpu_limit() if cpus is None else None
        self.enabled = quota is None or quota + 1e-6 >= len(self.cpus)
        self._clock = clock or time.monotonic
        self._own = own_seconds or self._own_seconds
        try:
            self._tick = float(os.sysconf("SC_CLK_TCK"))
        except (AttributeError, ValueError, OSError):
            self._tick = 100.0
        self._last = self._read()

    def _busy_seconds(self) -> float | None:
        text = _read(self.proc / "stat")
        if text is None:
            return None
        busy, seen = 0.0, 0
        for line in text.splitlines():
            name, _, rest = line.partition(" ")
            if not name.startswith("cpu") or not name[3:].isdigit() or int(name[3:]) not in self.cpus:
                continue
            values = rest.split()
            busy += sum(float(values[i]) for i in _BUSY_FIELDS if i < len(values))
            seen += 1
        return busy / self._tick if seen else None

    def _own_seconds(self) -> float:
        own = time.process_time()
        pid = os.getpid()
        children = _read(self.proc / str(pid) / "task" / str(pid) / "children") or ""
        for child in children.split():
            stat = _read(self.proc / child / "stat")
            if stat is None:
                continue
            fields = stat.rpartition(")")[2].split()  # after the command name: state is field 3
            if len(fields) > 14:
                own += sum(float(v) for v in fields[11:15]) / self._tick  # utime stime cutime cstime
        return own

    def _read(self) -> tuple[float, float, float] | None:
        if not self.enabled:
            return None
        busy = self._busy_seconds()
        return None if busy is None else (self._clock(), busy, self._own())

    def sample(self) -> float | None:
        """Busy CPUs of other processes since the last call (>= 0), or None where it cannot be measured."""
        now = self._read()
        last, self._last = self._last, now
        if now is None or last is None or now[0] - last[0] <= 0:
            return None
        return max(0.0, ((now[1] - last[1]) - (now[2] - last[2])) / (now[0] - last[0]))
