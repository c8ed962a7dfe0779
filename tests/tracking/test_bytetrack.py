"""detforge's batched ByteTrack (``bytetrack``) against its reference, the ``trackers`` package's ByteTrack
behind the same protocol (``bytetrack-roboflow``): with the package's second stage (:data:`PACKAGE`) both
report the same boxes with the same ids on every frame of randomized scenes, and their Kalman states agree bit
for bit; the paper's second stage (the default) differs only where it should."""

import numpy as np
import pytest
import supervision as sv
import torch

from detforge.tracking import bytetrack as ours_module
from detforge.tracking import create_tracker

PACKAGE = {"second_iou_threshold": None, "second_stage_lost": True}
"""The ``trackers`` package's second stage: low-score boxes with every track the first stage left, lost ones
included, at ``minimum_iou_threshold``."""


def ours_and_reference(**options):
    return create_tracker("bytetrack", **PACKAGE, **options), create_tracker("bytetrack-roboflow", **options)


def scene(seed, num_frames=70, num_objects=30, width=640.0, height=480.0):
    """Objects entering and leaving, moving at constant velocity with jitter (some crossing each other head
    on), missed detections, false positives, scores from clear to below ``minimum_score``, empty frames, and
    the detections in a random order each frame. Returns a list of (boxes float32 [N, 4], scores float32 [N],
    labels int64 [N])."""
    rng = np.random.default_rng(seed)
    start = rng.uniform([0, 0], [width, height], (num_objects, 2))
    velocity = rng.normal(0, 4, (num_objects, 2))
    crossing = rng.random(num_objects) < 0.3  # these run at each other along a shared horizontal line
    start[crossing, 1] = height / 2
    start[crossing, 0] = np.where(rng.random(int(crossing.sum())) < 0.5, 0.0, width)
    velocity[crossing] = np.stack(
        [np.where(start[crossing, 0] == 0, 8.0, -8.0), np.zeros(int(crossing.sum()))], 1
    )
    size = rng.uniform(15, 90, (num_objects, 2))
    enter = rng.integers(0, num_frames // 2, num_objects)
    leave = enter + rng.integers(5, num_frames, num_objects)
    confidence = rng.uniform(0.15, 1.0, num_objects)  # per object, jittered per frame
    labels = rng.integers(0, 3, num_objects)
    frames = []
    for f in range(num_frames):
        live = np.flatnonzero((enter <= f) & (f < leave) & (rng.random(num_objects) > 0.12))
        if f in (20, 21, 45):  # the detector saw nothing
            live = live[:0]
        xy = start[live] + velocity[live] * (f - enter[live])[:, None] + rng.normal(0, 1.5, (len(live), 2))
        boxes = np.concatenate([xy, xy + size[live] * rng.uniform(0.95, 1.05, (len(live), 1))], 1)
        scores = np.clip(confidence[live] + rng.normal(0, 0.2, len(live)), 0.01, 1.0)
        k = int(rng.integers(0, 4)) if len(live) else 0  # false positives
        fp = rng.uniform([0, 0], [width, height], (k, 2))
        boxes = np.concatenate([boxes, np.concatenate([fp, fp + rng.uniform(10, 60, (k, 2))], 1)])
        scores = np.concatenate([scores, rng.uniform(0.01, 0.8, k)])
        cls = np.concatenate([labels[live], rng.integers(0, 3, k)])
        order = rng.permutation(len(boxes))
        frames.append((boxes[order].astype(np.float32), scores[order].astype(np.float32), cls[order]))
    return frames


def as_dict(boxes, scores, labels):
    return {
        "boxes": torch.from_numpy(boxes),
        "scores": torch.from_numpy(scores),
        "labels": torch.from_numpy(labels),
    }


def reported(out):
    """The frame's (box, id, input row) set, with the label and score carried along."""
    return sorted(
        zip(
            map(tuple, out["boxes"].tolist()),
            out["track_ids"].tolist(),
            out["detection_indices"].tolist(),
            out["labels"].tolist(),
            out["scores"].tolist(),
        )
    )


def kalman_states(ours, reference):
    """Each tracker's tracks (all classes, in their order) as (Kalman state [T, 8], covariance [T, 8, 8])."""
    mine = [t for t in ours._tracks.values() if len(t)]
    theirs = [t for raw in reference._trackers.values() for t in raw.tracks]
    x = np.concatenate([t.x for t in mine]) if mine else np.zeros((0, 8))
    p = np.concatenate([t.P for t in mine]) if mine else np.zeros((0, 8, 8))
    ref_x = np.array([t.state_estimator.kf.state[:, 0] for t in theirs]).reshape(-1, 8)
    ref_p = np.array([t.state_estimator.kf.state_covariance for t in theirs]).reshape(-1, 8, 8)
    return (x, p), (ref_x, ref_p)


OPTIONS = {
    "defaults": {},
    "per_class": {"per_class": True},
    "eager": {"minimum_consecutive_frames": 1, "lost_track_buffer": 5, "track_activation_threshold": 0.5},
    "strict": {"minimum_iou_threshold": 0.4, "high_conf_det_threshold": 0.75, "frame_rate": 15.0},
    "no_buffer": {"lost_track_buffer": 0, "minimum_consecutive_frames": 3, "minimum_score": 0.0},
    "any_overlap": {"minimum_iou_threshold": 0.0, "per_class": True},
}


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("options", list(OPTIONS))
def test_same_tracks_as_the_reference_on_every_frame(options, seed):
    """Exact agreement: every frame, the same boxes with the same ids, labels, scores and input rows; the same
    tracks with bitwise-equal Kalman states (the batched filters make the package's floating-point
    operations, in its order)."""
    ours, reference = ours_and_reference(**OPTIONS[options])
    count, ids = 0, set()
    for f, frame in enumerate(scene(seed)):
        have, want = reported(ours.update(as_dict(*frame))), reported(reference.update(as_dict(*frame)))
        assert have == want, f"frame {f}"
        (x, p), (ref_x, ref_p) = kalman_states(ours, reference)
        np.testing.assert_array_equal(x, ref_x, err_msg=f"frame {f}")
        np.testing.assert_array_equal(p, ref_p, err_msg=f"frame {f}")
        count += len(have)
        ids |= {i for _, i, *_ in have}
    assert count > 250 and len(ids) > 10  # the scenes exercise the trackers (284 to 843 boxes, 12 to 76 ids)


def test_a_thousand_detections_agree_with_the_reference():
    """1000 objects a frame (the large-matrix IoU path)."""
    rng = np.random.default_rng(7)
    n = 1000
    start = rng.uniform(0, 1800, (n, 2))
    velocity = rng.uniform(-3, 3, (n, 2))
    size = rng.uniform(20, 60, (n, 2))
    ours, reference = ours_and_reference()
    for f in range(6):
        xy = start + velocity * f
        boxes = (np.concatenate([xy, xy + size], 1) + rng.normal(0, 1, (n, 4))).astype(np.float32)
        frame = (boxes, rng.uniform(0.05, 1, n).astype(np.float32), np.zeros(n, dtype=np.int64))
        have, want = reported(ours.update(as_dict(*frame))), reported(reference.update(as_dict(*frame)))
        assert have == want, f"frame {f}"
    assert len(have) > 500


def test_box_iou_is_supervisions_bit_for_bit():
    rng = np.random.default_rng(3)
    for trial in range(20):
        t, n = rng.integers(1, 300, 2)
        scale = [1.0, 100.0, 2000.0][trial % 3]
        a = rng.uniform(0, scale, (t, 4))
        a[:, 2:] = a[:, :2] + rng.uniform(-0.05, 0.3, (t, 2)) * scale  # some malformed (x2 < x1)
        b = rng.uniform(0, scale, (n, 4)).astype(np.float32)
        b[:, 2:] = b[:, :2] + rng.uniform(-0.05, 0.2, (n, 2)).astype(np.float32) * scale
        b[: min(t, n) // 2] = a[: min(t, n) // 2]  # identical boxes
        want = sv.box_iou_batch(a, b)
        for dense in (0, 10**9):  # the pairs path and the whole-matrix path
            ours_module._DENSE_IOU, kept = dense, ours_module._DENSE_IOU
            try:
                got = ours_module.box_iou(a, b)
            finally:
                ours_module._DENSE_IOU = kept
            assert got.dtype == np.float32 and np.array_equal(got, want), trial
    assert ours_module.box_iou(np.zeros((0, 4)), np.zeros((3, 4), np.float32)).shape == (0, 3)


def frame_of(boxes, scores, labels=None):
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    labels = np.zeros(len(boxes), dtype=np.int64) if labels is None else np.asarray(labels, dtype=np.int64)
    return as_dict(boxes, np.asarray(scores, dtype=np.float32), labels)


def test_reset_starts_a_new_sequence():
    frames = scene(1, num_frames=30)
    tracker = create_tracker("bytetrack")
    first = [reported(tracker.update(as_dict(*f))) for f in frames]
    tracker.reset()
    again = [reported(tracker.update(as_dict(*f))) for f in frames]
    assert first == again and min(i for frame in again if frame for _, i, *_ in frame) == 1


def test_empty_frames_age_tracks_until_the_buffer_ends():
    tracker = create_tracker("bytetrack", lost_track_buffer=3)
    assert len(tracker.update(frame_of([], []))["track_ids"]) == 0  # empty first frame: nothing to do
    for f in range(3):
        out = tracker.update(frame_of([10.0 + f, 10, 40 + f, 40], [0.9]))
    assert out["track_ids"].tolist() == [1] and out["boxes"].shape == (1, 4)
    for _ in range(3):  # missed for 3 frames: still alive
        empty = tracker.update(frame_of([], []))
        assert empty["boxes"].shape == (0, 4) and empty["track_ids"].dtype == torch.int64
    assert tracker.update(frame_of([16.0, 10, 46, 40], [0.9]))["track_ids"].tolist() == [1]
    for _ in range(4):  # missed for 4: the track ends, the next detection starts track 2
        tracker.update(frame_of([], []))
    tracker.update(frame_of([21.0, 10, 51, 40], [0.9]))
    assert tracker.update(frame_of([22.0, 10, 52, 40], [0.9]))["track_ids"].tolist() == [2]


def test_per_class_tracks_classes_apart_with_unique_ids():
    tracker = create_tracker("bytetrack", per_class=True)
    same_place = [[10.0, 10, 40, 40], [10.5, 10, 40.5, 40]]  # two classes at one place
    for f in range(3):
        out = tracker.update(frame_of(np.add(same_place, f), [0.9, 0.8], [3, 1]))
    # each class keeps its own track (new classes are taken in class order: class 1's track is confirmed first)
    assert sorted(zip(out["labels"].tolist(), out["track_ids"].tolist())) == [(1, 1), (3, 2)]
    assert sorted(tracker._tracks) == [1, 3]
    tracker.reset()
    assert tracker._tracks == {} and len(tracker.update(frame_of([], []))["track_ids"]) == 0


def test_scores_at_the_thresholds_follow_the_package():
    """``minimum_score`` and ``high_conf_det_threshold`` compare in float32, ``track_activation_threshold``
    in float64 (a score of float32(0.7) < 0.7 starts no track), as the wrapper and the package do."""
    above = float(np.nextafter(np.float32(0.7), np.float32(1)))
    for score, tracked in ((0.7, False), (above, True), (0.6, False)):
        ours, reference = ours_and_reference()
        for f in range(3):
            frame = frame_of([10.0 + f, 10, 40 + f, 40], [score])
            have, want = reported(ours.update(frame)), reported(reference.update(frame))
            assert have == want, score
        assert bool(have) == tracked, score
    for minimum_score, kept in ((0.45, True), (0.46, False)):  # a box scoring float32(0.45) < 0.45
        ours, reference = ours_and_reference(minimum_score=minimum_score)
        for f, score in enumerate([0.9, 0.9, 0.9, 0.45]):  # the last continues the track in the second stage
            frame = frame_of([10.0 + f, 10, 40 + f, 40], [score])
            have, want = reported(ours.update(frame)), reported(reference.update(frame))
            assert have == want, minimum_score
        assert bool(have) == kept, minimum_score


def test_the_papers_second_stage_trusts_a_low_score_box_only_on_a_live_track_it_overlaps_well():
    """Default (the paper): a low-score box continues a track seen in the previous frame when their IoU is at
    least 0.5; it does not continue a lost track (missed last frame) nor one it barely overlaps, which the
    package's second stage (IoU 0.1, lost tracks included) does."""

    def run(options, frames):
        tracker = create_tracker("bytetrack", **options)
        return [reported(tracker.update(frame_of(*f))) for f in frames]

    steady = [([10.0 + f, 10, 40 + f, 40], [0.9]) for f in range(3)]  # a confirmed track
    close = ([13.0, 10, 43, 40], [0.3])  # low score, IoU ~0.97 with the prediction
    shifted = ([28.0, 10, 58, 40], [0.3])  # low score, IoU ~0.2
    gap = ([], [])  # the object missed: the track is lost for a frame
    for options, expect in ((PACKAGE, (True, True, True)), ({}, (True, False, False))):
        taken = (
            bool(run(options, [*steady, close])[-1]),
            bool(run(options, [*steady, shifted])[-1]),
            bool(run(options, [*steady, gap, close])[-1]),
        )
        assert taken == expect, options
