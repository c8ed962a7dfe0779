"""benchmarks/timing.py: the interleaved timer calls the peers in turn, ABBA, and keeps the rounds aligned."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def timing(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.delitem(sys.modules, "timing", raising=False)
    import timing

    yield timing
    sys.modules.pop("timing", None)


def test_interleaved_times_alternate_order_and_align_rounds(timing):
    calls = []
    times = timing.interleaved_times({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 4, 1)
    assert calls == ["a", "b"] + ["a", "b", "b", "a", "a", "b", "b", "a"]  # warm-up, then ABBA rounds
    assert [len(t) for t in times.values()] == [4, 4]


def test_interleaved_median_times_are_the_medians(timing, monkeypatch):
    clock = iter([0.0, 1.0, 1.0, 3.0, 3.0, 6.0, 6.0, 7.0, 7.0, 8.0, 8.0, 11.0])  # a 1, b 2 | b 3, a 1 | a 1, b 3
    monkeypatch.setattr(timing.time, "perf_counter", lambda: next(clock))
    medians = timing.interleaved_median_times({"a": lambda: None, "b": lambda: None}, 3, 0)
    assert medians == {"a": 1.0, "b": 3.0}
