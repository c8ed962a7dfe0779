"""The ``memory`` tracker (the edge detectors' GRU ObjectTracker behind the protocol)."""

import pytest
import torch

from detforge.errors import InvalidValueError
from detforge.models.edge.tracker import ObjectTracker, TrackMemory
from detforge.tracking import create_tracker


def frame(boxes, scores=None, labels=None, **extra):
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    n = len(boxes)
    return {
        "boxes": boxes,
        "scores": torch.full((n,), 0.6) if scores is None else torch.tensor(scores),
        "labels": torch.zeros(n, dtype=torch.int64) if labels is None else torch.tensor(labels),
        **extra,
    }


def test_matches_the_object_tracker_it_wraps():
    torch.manual_seed(0)
    memory = TrackMemory(appearance_size=4, hidden_size=8)
    ours = create_tracker("memory", memory=memory, image_size=(100, 200), min_iou=0.1, max_missed=3)
    raw = ObjectTracker(memory=memory, image_size=(100, 200), min_iou=0.1, max_missed=3)
    for f in range(6):
        boxes = torch.tensor([[10.0 + 5 * f, 10, 40 + 5 * f, 40], [150.0 - 5 * f, 50, 180 - 5 * f, 90]])
        scores, labels, app = torch.tensor([0.9, 0.4]), torch.tensor([1, 2]), torch.randn(2, 4)
        ids, _ = raw.update(boxes, scores, labels, app)
        out = ours.update({"boxes": boxes, "scores": scores, "labels": labels, "embeddings": app})
        assert out["track_ids"].tolist() == ids.tolist()
        torch.testing.assert_close(out["boxes"], boxes)


def test_class_aware_a_new_label_starts_a_new_track():
    tracker = create_tracker("memory")
    assert tracker.update(frame([[0, 0, 10, 10]], labels=[1]))["track_ids"].tolist() == [1]
    out = tracker.update(frame([[1, 0, 11, 10]], labels=[2]))
    assert out["track_ids"].tolist() == [2] and out["labels"].tolist() == [2]


def test_track_scores_and_the_report_threshold():
    tracker = create_tracker("memory", report_score="track", min_track_score=0.7)
    reported = [tracker.update(frame([[f, 0, 10 + f, 10]], scores=[0.5])) for f in range(3)]
    # accumulated 1 - (1 - 0.9 c)(1 - 0.5): 0.5, 0.725, 0.826
    assert [len(r["track_ids"]) for r in reported] == [0, 1, 1]
    assert reported[1]["scores"].tolist() == pytest.approx([0.725])
    assert reported[1]["track_ids"].tolist() == [1]


def test_a_gru_memory_needs_the_frame_size():
    memory = TrackMemory(hidden_size=8)
    with pytest.raises(InvalidValueError, match="needs the frame size"):
        create_tracker("memory", memory=memory).update(frame([[0, 0, 10, 10]]))
    tracker = create_tracker("memory", memory=memory)
    tracker.update(frame([[0, 0, 10, 10]]), image=torch.zeros(3, 48, 64))
    assert tracker.tracker.image_size == (48, 64)
    tracker.reset()
    assert tracker.tracker is None


def test_embeddings_are_checked():
    tracker = create_tracker("memory")
    with pytest.raises(InvalidValueError, match=r"embeddings must be Tensor\[N, E\] with N = 1"):
        tracker.update(frame([[0, 0, 10, 10]], embeddings=torch.zeros(2, 4)))
    tracker.update(frame([[0, 0, 10, 10]], embeddings=torch.zeros(1, 4)))
    with pytest.raises(InvalidValueError, match="on every frame of a sequence or on none"):
        tracker.update(frame([[0, 0, 10, 10]]))
