import itertools

import pytest
import torch
from torchvision.ops import box_iou

from detforge.models.edge.tracker import ObjectTracker, TrackMemory


def _box(x, y, s=10.0):
    return [x, y, x + s, y + s]


def _tracker(memory=None, **kw):
    return ObjectTracker(memory=memory, image_size=(100, 100), **kw)


def _update(tracker, boxes, scores=None, labels=None):
    b = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    s = torch.full((len(b),), 0.9) if scores is None else torch.tensor(scores)
    lab = torch.zeros(len(b), dtype=torch.int64) if labels is None else torch.tensor(labels)
    return tracker.update(b, s, lab)


def test_moving_object_keeps_its_id_and_new_object_gets_a_new_one():
    tracker = _tracker(TrackMemory(hidden_size=16))
    ids0, _ = _update(tracker, [_box(10, 10)])
    ids1, _ = _update(tracker, [_box(13, 11), _box(70, 70)])
    ids2, _ = _update(tracker, [_box(72, 70), _box(16, 12)])  # order swapped
    assert ids1[0] == ids0[0] and ids2[1] == ids0[0]
    assert ids1[1] != ids0[0] and ids2[0] == ids1[1]


def test_constant_velocity_prediction():
    tracker = _tracker()
    _update(tracker, [_box(10, 10)])
    _update(tracker, [_box(14, 10)])
    torch.testing.assert_close(
        tracker.predicted_boxes()[0], torch.tensor(_box(16, 10))
    )  # half-smoothed velocity


def test_zero_detections_and_track_expiry():
    tracker = _tracker(max_missed=2)
    ids, conf = _update(tracker, [])
    assert ids.shape == (0,) and conf.shape == (0,)
    _update(tracker, [_box(10, 10)])
    for _ in range(3):
        _update(tracker, [])
    assert len(tracker) == 0


def test_different_classes_never_match():
    tracker = _tracker()
    ids0, _ = _update(tracker, [_box(10, 10)], labels=[0])
    ids1, _ = _update(tracker, [_box(10, 10)], labels=[1])
    assert ids0[0] != ids1[0]


def test_confidence_accumulates_over_a_track():
    tracker = _tracker()
    confidences = [float(_update(tracker, [_box(10, 10)], scores=[0.4])[1][0]) for _ in range(6)]
    assert confidences[0] == pytest.approx(0.4)
    assert all(b > a for a, b in itertools.pairwise(confidences))
    assert confidences[-1] > 0.75


def test_hungarian_matching_maximises_total_iou_like_brute_force():
    torch.manual_seed(1)
    tracker = _tracker(min_iou=0.0)
    first = torch.rand(4, 2) * 60
    boxes0 = torch.cat([first, first + 20], 1)
    ids0, _ = tracker.update(boxes0, torch.full((4,), 0.9), torch.zeros(4, dtype=torch.int64))
    boxes1 = boxes0[torch.tensor([2, 0, 3, 1])] + torch.randn(4, 4)
    predicted = tracker.predicted_boxes()
    ids1, _ = tracker.update(boxes1, torch.full((4,), 0.9), torch.zeros(4, dtype=torch.int64))
    iou = box_iou(predicted, boxes1)
    best = max(itertools.permutations(range(4)), key=lambda p: sum(float(iou[p[j], j]) for j in range(4)))
    assert [int(ids1[j]) for j in range(4)] == [int(ids0[best[j]]) for j in range(4)]


def test_gru_memory_state_advances_for_seen_tracks():
    memory = TrackMemory(hidden_size=8)
    tracker = _tracker(memory)
    _update(tracker, [_box(10, 10)])
    first = tracker.hidden.clone()
    _update(tracker, [_box(12, 10)])
    assert first.abs().sum() > 0 and not torch.equal(first, tracker.hidden)
