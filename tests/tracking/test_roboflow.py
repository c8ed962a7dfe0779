"""The ``trackers``-package wrappers: no behaviour of their own (same ids as the raw calls), the classes,
low scores, confirmation, BoT-SORT's frame, and the conversion to and from ``supervision.Detections``."""

import numpy as np
import pytest
import supervision as sv
import torch
import trackers

from detforge.tracking import create_tracker
from detforge.tracking.convert import from_sv_detections, to_sv_detections, tracked_rows


def scene(num_frames=40, num_objects=8, seed=0):
    """Objects moving linearly with jitter, random scores (some below every threshold), missed detections and
    false positives; boxes are distinct floats, so a box identifies its detection."""
    rng = np.random.default_rng(seed)
    start = rng.uniform(0, 400, (num_objects, 2))
    velocity = rng.uniform(-6, 6, (num_objects, 2))
    size = rng.uniform(20, 60, (num_objects, 2))
    labels = rng.integers(0, 3, num_objects)
    confidence = rng.uniform(0.3, 1.0, num_objects)  # per object, jittered per frame
    frames = []
    for f in range(num_frames):
        xy = start + velocity * f + rng.normal(0, 1.0, (num_objects, 2))
        boxes = np.concatenate([xy, xy + size], 1)
        keep = rng.random(num_objects) > 0.1  # missed detections
        fp = rng.uniform(0, 400, (2, 2))
        boxes = np.concatenate([boxes[keep], np.concatenate([fp, fp + 25], 1)])
        jittered = np.clip(confidence[keep] + rng.normal(0, 0.15, int(keep.sum())), 0.02, 1.0)
        scores = np.concatenate([jittered, rng.uniform(0.02, 0.5, 2)])
        cls = np.concatenate([labels[keep], rng.integers(0, 3, 2)])
        frames.append((boxes.astype(np.float32), scores.astype(np.float32), cls.astype(np.int64)))
    return frames


def textured_frame(f):
    rng = np.random.default_rng(1)
    background = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
    return np.roll(background, shift=f, axis=1)  # the camera pans one pixel a frame


RAW = {
    "bytetrack-roboflow": (trackers.ByteTrackTracker, {"minimum_score": 0.0}),
    "ocsort": (trackers.OCSORTTracker, {}),
    "sort": (trackers.SORTTracker, {}),
    "botsort": (trackers.BoTSORTTracker, {"minimum_score": 0.0}),
}


@pytest.mark.parametrize("name", list(RAW))
def test_wrapper_reports_what_the_raw_tracker_confirms(name):
    """Frame by frame, the wrapper reports exactly the boxes the raw tracker gives an id (>= 0), with id + 1."""
    cls, options = RAW[name]
    raw, ours = cls(), create_tracker(name, **options)
    reported = 0
    for f, (boxes, scores, labels) in enumerate(scene()):
        frame = textured_frame(f)  # RGB for detforge; BoT-SORT takes BGR
        extra = {"frame": np.ascontiguousarray(frame[..., ::-1])} if name == "botsort" else {}
        got = raw.update(sv.Detections(xyxy=boxes, confidence=scores, class_id=labels), **extra)
        want = sorted(
            (tuple(box), int(i) + 1) for box, i in zip(got.xyxy.tolist(), got.tracker_id.tolist()) if i >= 0
        )
        out = ours.update(
            {
                "boxes": torch.from_numpy(boxes),
                "scores": torch.from_numpy(scores),
                "labels": torch.from_numpy(labels),
            },
            image=frame,
        )
        have = sorted(zip(map(tuple, out["boxes"].tolist()), out["track_ids"].tolist()))
        assert have == want, f"frame {f}"
        reported += len(have)
    assert reported > 40  # the scene exercises the tracker (58 to 270 boxes reported)


BYTETRACKS = ["bytetrack", "bytetrack-roboflow"]  # detforge's and the package's: the same behaviour


@pytest.mark.parametrize("name", BYTETRACKS)
def test_minimum_consecutive_frames_hold_new_tracks_back(name):
    tracker = create_tracker(name, minimum_consecutive_frames=3)
    box = [[10.0, 10.0, 40.0, 40.0]]
    counts = []
    for f in range(4):
        d = {"boxes": torch.tensor(box) + f, "scores": torch.tensor([0.9]), "labels": torch.tensor([0])}
        counts.append(len(tracker.update(d)["track_ids"]))
    assert counts == [0, 0, 1, 1]  # unconfirmed (the package's -1) are not reported


def _frame(boxes, scores, labels):
    return {"boxes": torch.tensor(boxes), "scores": torch.tensor(scores), "labels": torch.tensor(labels)}


@pytest.mark.parametrize("name", BYTETRACKS)
def test_bytetrack_second_stage_reports_low_scores_above_minimum_score(name):
    tracker = create_tracker(name)  # high 0.6, minimum_score 0.1
    for f in range(3):
        tracker.update(_frame([[10.0 + f, 10, 40 + f, 40]], [0.9], [0]))
    kept = tracker.update(_frame([[13.0, 10, 43, 40]], [0.3], [0]))  # below high: continues the track
    assert kept["track_ids"].tolist() == [1] and kept["scores"].tolist() == pytest.approx([0.3])
    dropped = tracker.update(_frame([[14.0, 10, 44, 40]], [0.05], [0]))  # below minimum_score: dropped
    assert len(dropped["track_ids"]) == 0


@pytest.mark.parametrize("name", BYTETRACKS)
@pytest.mark.parametrize("per_class", [False, True])
def test_class_handling(per_class, name):
    """Association ignores classes unless ``per_class``; either way each box reports its own label and ids are
    unique over all classes."""
    tracker = create_tracker(name, per_class=per_class, minimum_consecutive_frames=1)
    for f in range(3):
        out = tracker.update(_frame([[10.0 + f, 10, 40 + f, 40], [100.0, 10, 130, 40]], [0.9, 0.9], [0, 1]))
    assert out["track_ids"].tolist() == [1, 2] and out["labels"].tolist() == [0, 1]
    flips = [
        tracker.update(_frame([[13.0 + f, 10, 43 + f, 40], [100.0, 10, 130, 40]], [0.9, 0.9], [2, 1]))
        for f in range(2)
    ]
    if per_class:  # the box starts a new track of class 2, reported once confirmed (the package's -1 first)
        assert [o["track_ids"].tolist() for o in flips] == [[2], [3, 2]]
        assert flips[1]["labels"].tolist() == [2, 1]
    else:  # one tracker for all classes: the box continues its track and reports its new label
        assert [o["track_ids"].tolist() for o in flips] == [[1, 2], [1, 2]]
        assert flips[0]["labels"].tolist() == [2, 1]


def test_per_class_ids_stay_unique_and_restart_on_reset():
    tracker = create_tracker("sort", per_class=True, minimum_consecutive_frames=1)
    boxes = [[0.0, 0, 10, 10], [50.0, 50, 60, 60], [0.0, 50, 10, 60]]
    for _ in range(2):
        out = tracker.update(_frame(boxes, [0.9] * 3, [4, 2, 4]))
    assert sorted(out["track_ids"].tolist()) == [1, 2, 3]
    tracker.reset()
    for _ in range(2):
        out = tracker.update(_frame(boxes[:1], [0.9], [5]))
    assert out["track_ids"].tolist() == [1]


def test_botsort_reads_the_image_only_with_camera_motion_compensation():
    assert create_tracker("botsort").uses_image
    assert not create_tracker("botsort", cmc_method="none").uses_image
    assert not create_tracker("bytetrack").uses_image and not create_tracker("bytetrack-roboflow").uses_image
    tracker = create_tracker("botsort")
    for f in range(3):  # Tensor [C, H, W] float, and np [H, W, 3] uint8
        image = (
            torch.from_numpy(textured_frame(f)).permute(2, 0, 1).float() / 255 if f % 2 else textured_frame(f)
        )
        out = tracker.update(_frame([[10.0 + f, 10, 40 + f, 40]], [0.9], [0]), image=image)
    assert out["track_ids"].tolist() == [1]


def test_conversion_round_trip_and_confirmed_rows():
    d = {**_frame([[1.0, 2, 3, 4], [5.0, 6, 7, 8]], [0.5, 0.9], [3, 1]), "track_ids": torch.tensor([7, 9])}
    sv_dets = to_sv_detections(d)
    assert sv_dets.xyxy.dtype == np.float32 and sv_dets.class_id.tolist() == [3, 1]
    back = from_sv_detections(sv_dets)
    for key in ("boxes", "scores", "labels", "track_ids"):
        torch.testing.assert_close(back[key], d[key])
    subset = to_sv_detections(d, torch.tensor([1]))
    subset.tracker_id = np.array([-1])
    rows, ids = tracked_rows(subset)
    assert rows.tolist() == [] and ids.tolist() == []
    subset.tracker_id = np.array([4])
    rows, ids = tracked_rows(subset)
    assert rows.tolist() == [1] and ids.tolist() == [4]
    assert from_sv_detections(sv.Detections.empty())["boxes"].shape == (0, 4)
