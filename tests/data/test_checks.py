"""The shared box and label checks, against brute-force per-box rules (hypothesis)."""

from __future__ import annotations

import warnings

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from detforge.data.checks import IssueLog, check_labels, looks_normalized, validate_boxes

coord = st.one_of(st.floats(-20, 80, allow_nan=False), st.just(float("nan")), st.just(float("inf")))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(coord, coord, coord, coord), max_size=8))
def test_validate_boxes_matches_per_box_rules(rows):
    h, w = 40, 50
    log = IssueLog("t")
    boxes, keep = validate_boxes(np.asarray(rows, dtype=np.float64).reshape(-1, 4), h, w, log, str)
    expected_kinds = []
    as_float32 = np.asarray(rows, dtype=np.float64).reshape(-1, 4).astype(np.float32)  # the stored dtype
    for (x1, y1, x2, y2), kept, out in zip(as_float32, keep, boxes):
        if not all(np.isfinite([x1, y1, x2, y2])):
            kind = "nan_box"
        elif x2 <= x1 or y2 <= y1:
            kind = "degenerate_box"
        elif x2 <= 0 or y2 <= 0 or x1 >= w or y1 >= h:
            kind = "outside_box"
        elif x1 < 0 or y1 < 0 or x2 > w or y2 > h:
            kind = "clipped_box"
        else:
            kind = None
        assert kept == (kind in (None, "clipped_box"))
        if kept:
            assert 0 <= out[0] < out[2] <= w and 0 <= out[1] < out[3] <= h
        if kind:
            expected_kinds.append(kind)
    assert dict(log.counts) == {k: expected_kinds.count(k) for k in set(expected_kinds)}


def test_unknown_size_checks_only_nan_and_degenerate():
    log = IssueLog("t")
    _, keep = validate_boxes(np.array([[-100, -100, -50, -50], [0, 0, 0, 5]]), None, None, log, str)
    assert keep.tolist() == [True, False] and dict(log.counts) == {"degenerate_box": 1}


def test_log_counts_all_but_names_first_few_and_warns_once():
    log = IssueLog("file.json", max_examples=2)
    log.add_many("degenerate_box", np.arange(7), lambda i: f"rec{i}")
    log.add("clipped_box", "rec9")
    assert log.counts["degenerate_box"] == 7 and log.examples["degenerate_box"] == ["rec0", "rec1"]
    assert log.skipped == {"degenerate_box": 7} and log.errors() == 7
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        log.warn()
    assert len(caught) == 1 and "file.json: 8 problem(s)" in str(caught[0].message)
    assert "7 x degenerate_box" in str(caught[0].message) and "rec1, ..." in str(caught[0].message)


def test_empty_log_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        IssueLog("x").warn()


def test_labels_and_normalized():
    log = IssueLog("t")
    assert check_labels(np.array([0, 2, 3, -1]), 3, log, str).tolist() == [True, True, False, False]
    assert log.counts["label_out_of_range"] == 2
    assert looks_normalized(np.array([[0.1, 0.2, 0.5, 0.9]]), np.array([[100, 100]]))
    assert not looks_normalized(np.array([[0.1, 0.2, 5, 0.9]]), np.array([[100, 100]]))
    assert not looks_normalized(np.zeros((0, 4)), np.array([[100, 100]]))
    assert not looks_normalized(np.array([[0.0, 0.0, 1.0, 1.0]]), np.array([[100, 100]]))  # one-pixel box


def test_box_that_collapses_in_float32_is_degenerate():
    log = IssueLog("t")
    _, keep = validate_boxes(np.array([[10.0, 1.0, 10.0 + 1e-9, 5.0]]), 40, 50, log, str)
    assert keep.tolist() == [False] and log.counts["degenerate_box"] == 1


def test_rounding_overshoot_is_clipped_without_a_warning():
    log = IssueLog("labels.txt")
    boxes, keep = validate_boxes(
        np.array([[0.0, 0.0, 100.0000004, 50.0], [-5.0, 0.0, 10.0, 10.0]]), 50, 100, log, lambda i: f"row {i}"
    )
    assert keep.all()
    assert boxes[0, 2] == 100.0 and boxes[1, 0] == 0.0
    assert log.counts.get("clipped_box") == 1
