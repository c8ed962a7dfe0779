"""The tracker protocol on every registered tracker: shapes and dtypes, ids, crossings, reset, bad input."""

import numpy as np
import pytest
import torch

from detforge.errors import InvalidValueError
from detforge.tracking import Tracker, create_tracker, list_trackers

TRACKERS = list_trackers()


def dets(boxes, scores=None, labels=None):
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    n = len(boxes)
    return {
        "boxes": boxes,
        "scores": torch.full((n,), 0.9) if scores is None else torch.tensor(scores, dtype=torch.float32),
        "labels": torch.zeros(n, dtype=torch.int64) if labels is None else torch.tensor(labels),
    }


def empty():
    return dets([])


def moving(frame, x0=10.0, y0=20.0, vx=4.0, vy=1.0, size=30.0):
    x, y = x0 + vx * frame, y0 + vy * frame
    return [x, y, x + size, y + size]


def check_result(out, n_inputs):
    assert set(out) >= {"boxes", "scores", "labels", "track_ids", "detection_indices"}
    m = len(out["track_ids"])
    assert out["boxes"].shape == (m, 4) and out["boxes"].dtype == torch.float32
    assert out["scores"].shape == (m,) and out["scores"].dtype == torch.float32
    assert out["labels"].shape == (m,) and out["labels"].dtype == torch.int64
    assert out["track_ids"].dtype == torch.int64 and out["detection_indices"].dtype == torch.int64
    assert m <= n_inputs and (out["track_ids"] >= 1).all()
    assert len(set(out["track_ids"].tolist())) == m  # one box per track
    assert out["detection_indices"].tolist() == sorted(set(out["detection_indices"].tolist()))


def run(tracker, frames):
    outs = []
    for frame in frames:
        out = tracker.update(frame)
        check_result(out, len(frame["boxes"]))
        for key in ("boxes", "scores", "labels"):  # reported values are the input detections' own
            torch.testing.assert_close(out[key], frame[key][out["detection_indices"]].to(out[key].dtype))
        outs.append(out)
    return outs


@pytest.mark.parametrize("name", TRACKERS)
def test_is_a_tracker_and_empty_frames_give_empty_results(name):
    tracker = create_tracker(name)
    assert isinstance(tracker, Tracker)
    for out in run(tracker, [empty(), empty()]):
        assert out["boxes"].shape == (0, 4) and len(out["track_ids"]) == 0
    run(tracker, [dets([moving(f)]) for f in range(3)] + [empty()] + [dets([moving(f)]) for f in range(4, 6)])


@pytest.mark.parametrize("name", TRACKERS)
def test_one_straight_moving_object_keeps_id_one(name):
    tracker = create_tracker(name)
    outs = run(tracker, [dets([moving(f)]) for f in range(20)])
    reported = [o["track_ids"].tolist() for o in outs if len(o["track_ids"])]
    assert len(reported) >= 17  # confirmation takes at most 3 frames
    assert all(ids == [1] for ids in reported)
    assert len(outs[-1]["track_ids"]) == 1  # reported on every frame once confirmed


@pytest.mark.parametrize("name", TRACKERS)
def test_two_objects_crossing_keep_their_identities(name):
    """A moves right, B moves left, 2 px apart vertically; their boxes overlap for ~8 frames around frame 15."""
    tracker = create_tracker(name)
    frames = [
        dets([moving(f, x0=0, y0=40, vx=4, vy=0), moving(f, x0=120, y0=42, vx=-4, vy=0)], labels=[0, 1])
        for f in range(30)
    ]
    outs = run(tracker, frames)

    def ids(out):  # detection row -> id
        return dict(zip(out["detection_indices"].tolist(), out["track_ids"].tolist(), strict=True))

    before, after = ids(outs[5]), ids(outs[-1])
    assert set(before) == {0, 1} and set(after) == {0, 1}
    assert before[0] != before[1]
    assert after == before


@pytest.mark.parametrize("name", TRACKERS)
def test_reset_restarts_ids(name):
    tracker = create_tracker(name)
    first = run(tracker, [dets([moving(f), moving(f, y0=100)]) for f in range(5)])[-1]
    assert sorted(first["track_ids"].tolist()) == [1, 2]
    second = run(tracker, [dets([moving(f, y0=60)]) for f in range(5)])[-1]  # no reset: a new id
    assert second["track_ids"].tolist() == [3]
    tracker.reset()
    third = run(tracker, [dets([moving(f, y0=60)]) for f in range(5)])[-1]
    assert third["track_ids"].tolist() == [1]


@pytest.mark.parametrize("name", TRACKERS)
def test_ids_are_never_reused_after_a_track_ends(name):
    tracker = create_tracker(name, **({"max_missed": 1} if name == "memory" else {"lost_track_buffer": 1}))
    seen = []
    for start in (0, 10):  # an object, a gap that ends its track, another object elsewhere
        outs = run(tracker, [dets([moving(f, y0=20 + 10 * start)]) for f in range(start, start + 5)])
        seen.append(outs[-1]["track_ids"].tolist())
        run(tracker, [empty()] * 4)
    assert seen == [[1], [2]]


@pytest.mark.parametrize("name", TRACKERS)
def test_labels_are_the_detections_own(name):
    tracker = create_tracker(name)
    frames = [dets([moving(f), moving(f, y0=100)], scores=[0.9, 0.8], labels=[3, 7]) for f in range(5)]
    out = run(tracker, frames)[-1]
    assert out["detection_indices"].tolist() == [0, 1]
    assert out["labels"].tolist() == [3, 7]
    assert out["scores"].tolist() == pytest.approx([0.9, 0.8])


@pytest.mark.parametrize("name", TRACKERS)
def test_dtypes_and_device_follow_the_protocol(name):
    tracker = create_tracker(name)
    for f in range(4):
        d = {
            "boxes": torch.tensor([moving(f)], dtype=torch.float64),
            "scores": torch.tensor([0.9], dtype=torch.float16),
            "labels": torch.tensor([2], dtype=torch.int32),
            "masks": torch.zeros(1, 8, 8),  # other keys are ignored
        }
        out = tracker.update(d, image=torch.zeros(3, 160, 160))
    check_result(out, 1)
    assert out["labels"].tolist() == [2] and out["boxes"].device == d["boxes"].device


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("name", TRACKERS)
def test_results_stay_on_the_input_device(name):
    tracker = create_tracker(name)
    for f in range(4):
        d = {k: v.cuda() for k, v in dets([moving(f)]).items()}
        out = tracker.update(d, image=torch.zeros(3, 160, 160, device="cuda"))
    assert all(v.device.type == "cuda" for v in out.values())
    assert out["track_ids"].tolist() == [1]


BAD_INPUTS = {
    "not a dict": ([[0, 0, 1, 1]], r"takes a dict"),
    "missing scores": (
        {"boxes": torch.zeros(1, 4), "labels": torch.zeros(1, dtype=torch.int64)},
        r"lack scores",
    ),
    "boxes [N, 5]": (
        {"boxes": torch.zeros(2, 5), "scores": torch.zeros(2), "labels": torch.zeros(2, dtype=torch.int64)},
        r"boxes must be Tensor\[N, 4\]",
    ),
    "scores count": (
        {"boxes": torch.zeros(2, 4), "scores": torch.zeros(3), "labels": torch.zeros(2, dtype=torch.int64)},
        r"scores must be Tensor\[N\] with N = 2",
    ),
    "float labels": (
        {"boxes": torch.zeros(1, 4), "scores": torch.zeros(1), "labels": torch.zeros(1)},
        r"labels must be integer",
    ),
    "NaN box": (
        {
            "boxes": torch.full((1, 4), float("nan")),
            "scores": torch.zeros(1),
            "labels": torch.zeros(1).long(),
        },
        r"finite",
    ),
    "list boxes": (
        {"boxes": [[0, 0, 1, 1]], "scores": torch.zeros(1), "labels": torch.zeros(1).long()},
        r"boxes must be a Tensor",
    ),
}


@pytest.mark.parametrize("name", TRACKERS)
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_a_clear_error(name, case):
    value, message = BAD_INPUTS[case]
    with pytest.raises(InvalidValueError, match=message):
        create_tracker(name).update(value)


def test_bad_image_is_a_clear_error():
    tracker = create_tracker("botsort")
    with pytest.raises(InvalidValueError, match=r"image must be Tensor\[C, H, W\]"):
        tracker.update(dets([moving(0)]), image=torch.zeros(4, 8, 8))
    with pytest.raises(InvalidValueError, match=r"must be uint8"):
        tracker.update(dets([moving(0)]), image=np.zeros((8, 8, 3), np.float32))
