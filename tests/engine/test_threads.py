import lightning as L
import pytest
import torch

from detforge.engine import threads as th
from detforge.engine.adaptive_threads import AdaptiveThreads, ThreadController, ThreadPolicy
from detforge.engine.threads import (
    available_cpus,
    cgroup_cpu_limit,
    configure_threads,
    fixed_threads,
)

POLICY = ThreadPolicy(
    warmup=2, window=3, settle=1, degrade=1.25, margin=0.05, probe_every_s=10.0, max_probe_every_s=40.0
)


@pytest.fixture(autouse=True)
def _keep_threads(monkeypatch):
    monkeypatch.delenv("DETFORGE_NUM_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _cgroup(tmp_path, proc: str, files: dict[str, str]):
    for rel, text in files.items():
        path = tmp_path / "fs" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (tmp_path / "cgroup").write_text(proc)
    return tmp_path / "fs", tmp_path / "cgroup"


def test_cgroup_v2_quota_smallest_along_the_path(tmp_path):
    root, proc = _cgroup(
        tmp_path,
        "0::/user/job\n",
        {"cpu.max": "max 100000\n", "user/cpu.max": "300000 100000\n", "user/job/cpu.max": "max 100000\n"},
    )
    assert cgroup_cpu_limit(root, proc) == pytest.approx(3.0)
    (root / "user/job/cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_limit(root, proc) == pytest.approx(1.5)
    (root / "user/job/cpu.max").write_text("max 100000\n")
    (root / "user/cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(root, proc) is None


def test_cgroup_v1_quota(tmp_path):
    root, proc = _cgroup(
        tmp_path,
        "4:memory:/x\n3:cpu,cpuacct:/docker/abc\n",
        {
            "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "200000",
            "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000",
        },
    )
    assert cgroup_cpu_limit(root, proc) == pytest.approx(2.0)
    (root / "cpu,cpuacct/docker/abc/cpu.cfs_quota_us").write_text("-1")
    assert cgroup_cpu_limit(root, proc) is None
    assert cgroup_cpu_limit(tmp_path / "nothing", tmp_path / "missing") is None


def test_available_cpus_takes_affinity_and_quota(tmp_path, monkeypatch):
    monkeypatch.setattr(th.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    root, proc = _cgroup(tmp_path, "0::/\n", {"cpu.max": "250000 100000\n"})
    assert available_cpus(root, proc) == 2  # 2.5 CPUs of quota: 2 threads, not 3
    (root / "cpu.max").write_text("max 100000\n")
    assert available_cpus(root, proc) == 4
    (root / "cpu.max").write_text("50000 100000\n")
    assert available_cpus(root, proc) == 1


def test_fixed_threads_and_configure(monkeypatch):
    assert fixed_threads("auto") is None
    assert fixed_threads(3) == 3
    monkeypatch.setenv("DETFORGE_NUM_THREADS", "1")
    assert fixed_threads("auto") == 1
    assert fixed_threads(2) == 2  # an explicit option wins over the environment
    assert configure_threads() == 1 and torch.get_num_threads() == 1
    monkeypatch.setenv("DETFORGE_NUM_THREADS", "auto")
    assert fixed_threads("auto") is None
    for bad in ("zero", "0", "-2"):
        monkeypatch.setenv("DETFORGE_NUM_THREADS", bad)
        with pytest.raises(ValueError, match="DETFORGE_NUM_THREADS"):
            fixed_threads("auto")
    with pytest.raises(ValueError, match="auto"):
        AdaptiveThreads(threads=0)
    monkeypatch.delenv("DETFORGE_NUM_THREADS")
    monkeypatch.setattr(th, "available_cpus", lambda: 4)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert configure_threads() == 3 and torch.get_num_threads() == 3


def feed(controller: ThreadController, times: dict[int, float], steps: int) -> list[int]:
    """Run ``steps`` steps whose duration depends on the thread count; the count used at each step."""
    used = []
    for _ in range(steps):
        used.append(controller.threads)
        controller.observe(times[controller.threads])
    return used


def test_quiet_machine_keeps_all_threads_and_backs_off_probing():
    c = ThreadController(2, policy=POLICY)
    quiet = {2: 0.274, 1: 0.376}
    used = feed(c, quiet, 200)
    assert c.threads == 2 and c.reference == pytest.approx(0.274)
    assert used[:5] == [2] * 5 and used[6:9] == [1, 1, 1]  # the first probe comes right after one measurement
    probes = [d for d in c.history if "trying 1" in d.reason]
    assert 2 <= len(probes) <= 6  # probes get rarer: 10, 20, 40 s ... apart
    assert used.count(1) <= 4 * len(probes)
    assert all("did not beat" in d.reason for d in c.history if "back to" in d.reason)


def test_a_neighbour_arrives_and_leaves():
    c = ThreadController(2, policy=POLICY)
    quiet, busy = {2: 0.274, 1: 0.376}, {2: 0.777, 1: 0.310}
    feed(c, quiet, 60)
    assert c.threads == 2
    feed(c, busy, 30)
    assert c.threads == 1
    assert any("rose from 274 ms to 777 ms" in d.reason for d in c.history)
    assert any("1 threads 310 ms beat 2 threads 777 ms" in d.reason for d in c.history)
    used = feed(c, busy, 200)
    assert used.count(1) > 0.9 * len(used)  # stays at 1 while the neighbour runs; probes up rarely
    used = feed(c, quiet, 150)  # probes come at most max_probe_every_s (40 s) apart
    assert c.threads == 2 and used.index(2) < 40 / 0.376 + 10  # back to all threads once it is gone


def test_started_beside_a_busy_neighbour_drops_threads_at_once():
    c = ThreadController(2, policy=POLICY)
    used = feed(c, {2: 0.777, 1: 0.310}, 20)
    assert used.index(1) <= POLICY.warmup + POLICY.window + 1
    assert c.threads == 1


def test_walks_down_and_up_while_it_helps():
    c = ThreadController(8, policy=POLICY)
    times = {8: 1.0, 4: 0.6, 2: 0.5, 1: 0.55}
    feed(c, times, 40)
    assert c.threads == 2
    assert [d.threads for d in c.history[:4]] == [4, 2, 1, 2]
    feed(c, {8: 0.2, 4: 0.3, 2: 0.5, 1: 0.9}, 100)
    assert c.threads == 8


def test_noise_does_not_flip_the_count():
    c = ThreadController(2, policy=POLICY)
    # a slower measurement than the reference that is within `degrade` never starts a trial by itself
    feed(c, {2: 0.274, 1: 0.376}, 20)
    changes = len(c.history)
    for t in [0.30, 0.31, 0.29, 0.33, 0.30, 0.31]:
        c.observe(t)
    assert len(c.history) == changes and c.threads == 2


def test_degraded_but_fewer_threads_not_faster_keeps_count_without_thrashing():
    c = ThreadController(2, policy=POLICY)
    feed(c, {2: 0.274, 1: 0.376}, 20)
    n = len(c.history)
    feed(c, {2: 0.6, 1: 0.9}, 12)  # slower, but one thread is slower still
    assert c.threads == 2 and len(c.history) == n + 2  # one trial, then back
    feed(c, {2: 0.6, 1: 0.9}, 8)
    assert len(c.history) == n + 2  # 0.6 is the new reference: no new trial until a probe is due


def test_controller_validates():
    with pytest.raises(ValueError):
        ThreadController(0)
    with pytest.raises(ValueError):
        ThreadPolicy(degrade=1.0)
    one = ThreadController(1, policy=POLICY)
    feed(one, {1: 1.0}, 50)
    assert one.threads == 1 and one.history == []


def test_callback_applies_decisions(caplog):
    cb = AdaptiveThreads(policy=POLICY)
    cb.controller = ThreadController(2, policy=POLICY)
    torch.set_num_threads(2)
    seen = []
    for _ in range(12):
        if cb.step(0.777 if torch.get_num_threads() == 2 else 0.310) is not None:
            seen.append(torch.get_num_threads())
    assert seen[:2] == [1, 1] and torch.get_num_threads() == 1


class _Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.threads_seen: list[int] = []

    def training_step(self, batch, batch_idx):
        self.threads_seen.append(torch.get_num_threads())
        return self.layer(batch[0]).sum()

    def train_dataloader(self):
        data = torch.utils.data.TensorDataset(torch.randn(8, 4))
        return torch.utils.data.DataLoader(data, batch_size=2)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(callback, tmp_path):
    model = _Tiny()
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model)
    return model


def test_environment_fixes_the_count_during_fit(tmp_path, monkeypatch):
    torch.set_num_threads(2)
    monkeypatch.setenv("DETFORGE_NUM_THREADS", "1")
    cb = AdaptiveThreads()
    model = _fit(cb, tmp_path)
    assert set(model.threads_seen) == {1} and cb.controller is None
    assert torch.get_num_threads() == 2  # restored when fit ends


class _QuietNeighbours:
    enabled = True

    def sample(self):
        return 0.0


def test_auto_adapts_on_cpu(tmp_path, monkeypatch):
    monkeypatch.setattr(th, "available_cpus", lambda: 2)
    monkeypatch.setattr(th, "NeighbourLoad", _QuietNeighbours)  # whatever else runs beside the tests
    cb = AdaptiveThreads()
    model = _fit(cb, tmp_path)
    assert model.threads_seen[0] == 2 and cb.controller is not None and cb.controller.max_threads == 2


def test_default_callbacks_include_adaptive_threads(tmp_path):
    from detforge.engine.trainer import default_callbacks

    callbacks = default_callbacks(tmp_path, progress_bar=False, artifacts=False)
    assert [c.threads for c in callbacks if isinstance(c, AdaptiveThreads)] == ["auto"]
    callbacks = default_callbacks(tmp_path, progress_bar=False, artifacts=False, threads=1)
    assert [c.threads for c in callbacks if isinstance(c, AdaptiveThreads)] == [1]


def test_a_probe_beside_a_busy_neighbour_costs_one_step():
    """At 1 thread beside a spinning neighbour (0.5 s a step; 2 threads 1.44 s), every probe of 2 threads ends
    after its settle step and one timed step, and the run stays within 10% of 1 thread's speed."""
    c = ThreadController(2, policy=POLICY)
    busy = {2: 1.44, 1: 0.5}
    feed(c, busy, 20)
    assert c.threads == 1
    used = feed(c, busy, 400)
    probes = [d for d in c.history[2:] if "trying 2" in d.reason]
    assert probes and used.count(2) == (POLICY.settle + 1) * len(probes)
    total = sum(busy[n] for n in used)
    assert total < 1.1 * 400 * busy[1]
    # a slow first step that is not clearly slower does not end a quiet probe early
    quiet = ThreadController(2, policy=POLICY)
    feed(quiet, {2: 0.274, 1: 0.376}, 7)
    assert quiet.threads == 1 and quiet.phase == "trial"
    feed(quiet, {2: 0.274, 1: 0.376}, 1)  # 1.37x slower than 2 threads: the window runs on
    assert quiet.phase == "trial" and len(quiet._samples) == 2


def test_slow_steps_probe_at_most_every_min_probe_gap_steps():
    """Steps of 6 s (a 400 px fine-tune): a gap of seconds alone would probe every few steps; probes come
    at least ``min_probe_gap_steps`` steps apart, so a quiet run loses under 5% to them."""
    c = ThreadController(2, policy=ThreadPolicy(probe_every_s=30.0, max_probe_every_s=120.0))
    times = {2: 6.0, 1: 8.2}
    used = feed(c, times, 300)
    starts = [i for i in range(1, len(used)) if used[i] == 1 and used[i - 1] == 2]
    assert len(starts) >= 2 and all(b - a >= 60 for a, b in zip(starts, starts[1:], strict=False))
    assert sum(times[n] for n in used) < 1.05 * 300 * times[2]


def feed_with_load(c: ThreadController, times: dict[int, float], load: float, steps: int) -> list[int]:
    """As ``feed``, with the neighbours' busy CPUs known at every step."""
    used = []
    for _ in range(steps):
        used.append(c.threads)
        c.observe(times[c.threads], neighbours=load)
    return used


def test_slower_steps_with_quiet_neighbours_try_no_fewer_threads():
    """A slower window while no other process is busy is this run's own variance (a quiet shared VM wandered
    from 92 to 150 ms a step): no trial of fewer threads; beside a busy neighbour the same slowdown starts one."""
    c = ThreadController(2, policy=POLICY)
    feed_with_load(c, {2: 0.274, 1: 0.376}, 0.0, 40)
    n = len(c.history)
    feed_with_load(c, {2: 0.6, 1: 0.9}, 0.1, 6)  # slower, nobody else busy
    assert c.threads == 2 and len(c.history) == n and c.reference == pytest.approx(0.274)
    feed_with_load(c, {2: 0.777, 1: 0.310}, 1.0, 6)  # a neighbour keeps a CPU busy
    assert c.threads == 1 and "beside 1.0 busy CPUs" in c.history[-1].reason


def test_no_probe_up_while_the_neighbour_keeps_the_cpus_busy():
    """At 1 of 2 threads beside one busy CPU there is nothing to grow into: no probe of 2 threads, however
    long; once the neighbour is gone the probe comes at the next window and wins."""
    c = ThreadController(2, start=1, policy=POLICY)
    busy, quiet = {2: 1.44, 1: 0.5}, {2: 0.274, 1: 0.376}
    used = feed_with_load(c, busy, 1.0, 300)
    assert set(used) == {1} and c.history == []
    used = feed_with_load(c, quiet, 0.0, 2 * POLICY.window + 2)
    assert c.threads == 2 and "beat 1 threads" in c.history[-1].reason
    # load unknown (None at any step of the window): the timing-only schedule probes as before
    blind = ThreadController(2, start=1, policy=POLICY)
    feed(blind, busy, 40)
    assert any("trying 2" in d.reason for d in blind.history)


def _fake_proc(tmp_path, cpu_ticks: dict[int, tuple[int, ...]]):
    lines = ["cpu  0 0 0 0 0 0 0 0 0 0"]
    lines += [f"cpu{i} " + " ".join(str(v) for v in t) for i, t in cpu_ticks.items()]
    (tmp_path / "stat").write_text("\n".join(lines) + "\nintr 0\n")


def test_neighbour_load_from_proc_stat(tmp_path, monkeypatch):
    """Busy ticks (user nice system irq softirq steal) of the affinity CPUs, less this process's own CPU
    seconds, over the wall time between two samples; CPUs outside the set and idle / iowait do not count."""
    monkeypatch.setattr(th.os, "sysconf", lambda name: 100)
    clock, own = [0.0], [0.0]
    _fake_proc(tmp_path, {0: (0,) * 10, 1: (0,) * 10, 2: (0,) * 10})
    meter = th.NeighbourLoad(tmp_path, cpus={0, 1}, clock=lambda: clock[0], own_seconds=lambda: own[0])
    # 2 s later: CPU 0 fully busy (200 ticks: 150 user + 50 steal), CPU 1 half busy, CPU 2 (not ours) busy
    _fake_proc(
        tmp_path,
        {0: (150, 0, 0, 0, 0, 0, 0, 50, 0, 0), 1: (50, 0, 50, 100, 0, 0, 0, 0, 0, 0), 2: (200,) + (0,) * 9},
    )
    clock[0], own[0] = 2.0, 1.0  # this process used 1 CPU second of it
    assert meter.sample() == pytest.approx((300 / 100 - 1.0) / 2.0)
    assert meter.sample() is None  # no time passed
    clock[0] = 3.0
    assert meter.sample() == 0.0
    assert th.NeighbourLoad(tmp_path / "missing", cpus={0}).sample() is None


def test_neighbour_load_counts_this_process_and_its_children_as_own(tmp_path):
    """The real /proc: a child process spinning is this run's own work (DataLoader workers), not a
    neighbour's."""
    import subprocess
    import sys
    import time

    meter = th.NeighbourLoad(cpus={0})
    if meter.sample() is None and not meter.enabled:
        pytest.skip("no /proc or a cgroup quota")
    own_before = meter._own_seconds()
    child = subprocess.Popen(
        [sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 0.6: pass"]
    )
    time.sleep(0.4)
    assert meter._own_seconds() - own_before > 0.1  # the child's CPU time counts as ours
    child.wait()


def test_start_takes_the_cpus_other_processes_leave_free(monkeypatch):
    class Busy:
        enabled = True

        def __init__(self, load):
            self.load = load

        def sample(self):
            return self.load

    for load, expected in [(0.0, 2), (0.4, 2), (0.8, 1), (3.0, 1), (None, 2)]:
        monkeypatch.setattr(th, "NeighbourLoad", lambda load=load: Busy(load))
        cb = AdaptiveThreads(policy=POLICY)
        assert cb.start(2, settle_s=0.0 if load is None else 0.01) == expected
        assert torch.get_num_threads() == expected and cb.controller.max_threads == 2
    cb = AdaptiveThreads(policy=POLICY)
    assert cb.start(2, measure_neighbours=False) == 2 and cb.load is None
