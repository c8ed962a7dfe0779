"""Trackers by name: listing, options checked against each builder's signature, registering one's own."""

import numpy as np
import pytest
import torch

from detforge.errors import InvalidValueError
from detforge.tracking import Tracker, create_tracker, list_trackers, register_tracker, registry
from detforge.tracking.base import empty_tracks
from detforge.tracking.registry import tracker_options


def test_builtin_trackers_with_the_default_first():
    names = list_trackers()
    assert names[0] == "bytetrack" == create_tracker().name
    assert {"bytetrack", "bytetrack-roboflow", "ocsort", "botsort", "sort", "memory"} <= set(names)


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(
        InvalidValueError,
        match=r"unknown tracker 'deepsort'; known trackers: bytetrack, bytetrack-roboflow, ocsort",
    ):
        create_tracker("deepsort")


def test_unknown_option_names_it_and_the_accepted_ones():
    with pytest.raises(
        InvalidValueError, match=r"tracker 'ocsort' has no option 'track_buffer'; its options: .*delta_t"
    ):
        create_tracker("ocsort", track_buffer=30)
    assert "lost_track_buffer" in tracker_options("sort")


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("botsort", {"cmc_method": "flow"}, r"cmc_method must be one of \('sparseOptFlow'"),
        ("memory", {"report_score": "best"}, r"report_score must be one of \('detection', 'track'\)"),
        ("bytetrack", {"high_conf_det_threshold": 1.5}, r"high_conf_det_threshold must be in \[0, 1\]"),
        ("bytetrack", {"lost_track_buffer": -1}, r"lost_track_buffer must be an integer >= 0"),
        ("sort", {"minimum_consecutive_frames": 1.5}, r"minimum_consecutive_frames must be an integer >= 1"),
        ("ocsort", {"frame_rate": 0}, r"frame_rate must be a finite number > 0"),
        ("ocsort", {"minimum_iou_threshold": "high"}, r"minimum_iou_threshold must be a number"),
        ("sort", {"per_class": "yes"}, r"per_class must be True or False"),
        ("memory", {"memory": torch.nn.Linear(2, 2)}, r"memory must be a TrackMemory"),
        ("memory", {"max_missed": -2}, r"max_missed must be an integer >= 0"),
    ],
)
def test_bad_option_values_are_clear_errors(name, options, message):
    with pytest.raises(InvalidValueError, match=message):
        create_tracker(name, **options)


def test_options_reach_the_wrapped_tracker():
    options = {"lost_track_buffer": 60, "frame_rate": 15, "minimum_consecutive_frames": 1}
    tracker = create_tracker("bytetrack-roboflow", **options)
    wrapped = tracker.factory()
    assert wrapped.maximum_frames_without_update == 30 and wrapped.minimum_consecutive_frames == 1
    assert "lost_track_buffer=60" in repr(tracker) and tracker.name == "bytetrack-roboflow"
    ours = create_tracker("bytetrack", **options)  # detforge's ByteTrack: the same scaling
    assert ours.maximum_frames_without_update == 30 and ours.minimum_consecutive_frames == 1
    assert "lost_track_buffer=60" in repr(ours)
    assert not create_tracker("botsort", cmc_method="none").factory().enable_cmc


def test_register_a_tracker_of_ones_own(monkeypatch):
    monkeypatch.setattr(registry, "_TRACKERS", dict(registry._TRACKERS))  # registered for this test only

    @register_tracker("test-everything")
    class EverythingTracker(Tracker):
        """Reports every detection as its own track."""

        def __init__(self, *, first_id: int = 1) -> None:
            self.first_id = first_id
            self.reset()

        def reset(self) -> None:
            self.next_id = self.first_id

        def _update(self, detections, image):
            n = len(detections["boxes"])
            if n == 0:
                return empty_tracks()
            ids = torch.arange(self.next_id, self.next_id + n)
            self.next_id += n
            return {**detections, "track_ids": ids, "detection_indices": torch.arange(n)}

    assert "test-everything" in list_trackers()
    tracker = create_tracker("test-everything", first_id=5)
    out = tracker.update(
        {"boxes": np.zeros((2, 4), np.float32), "scores": np.ones(2), "labels": np.zeros(2, int)}
    )
    assert out["track_ids"].tolist() == [5, 6]
    with pytest.raises(ValueError, match="already registered"):
        register_tracker("bytetrack")(EverythingTracker)


def test_tracker_thresholds_follow_the_detectors_threshold():
    from detforge.tracking import tracker_thresholds

    assert tracker_thresholds("bytetrack", 0.4) == {
        "high_conf_det_threshold": 0.4,
        "track_activation_threshold": pytest.approx(0.5),  # the paper's new-track margin
    }
    assert tracker_thresholds("botsort", 0.95)["track_activation_threshold"] == 1.0
    assert tracker_thresholds("ocsort", 0.3) == {"high_conf_det_threshold": 0.3}
    assert tracker_thresholds("memory", 0.3) == {}
    for name in ("bytetrack", "ocsort", "botsort", "sort"):  # every value is an option the tracker takes
        create_tracker(name, **tracker_thresholds(name, 0.3))


def test_model_options_hand_the_edge_detectors_memory_to_the_memory_tracker(tiny_detector):
    from detforge.models import create_model
    from detforge.tracking.registry import model_options

    nexus = create_model("nexus", num_classes=2)
    assert model_options("memory", nexus) == {"memory": nexus.memory}
    assert model_options("bytetrack", nexus) == {}
    assert model_options("memory", tiny_detector()) == {}, "a model without a memory: constant velocity"
    create_tracker("memory", **model_options("memory", nexus))
