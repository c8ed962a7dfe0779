"""The batched confusion matrix and per-image errors against a plain per-image greedy loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from detforge.metrics import confusion_matrix as public_confusion_matrix
from detforge.metrics.confusion import MatchInputs, confusion_matrix, image_errors, matrix_of_pairs
from detforge.metrics.plots import confusion_matrix as plots_confusion_matrix


def _loop_reference(preds, targets, num_classes, iou_threshold, score_threshold):
    """The documented rule, one image and one pair at a time: all (object, detection) pairs with IoU >= the
    threshold, highest IoU first (ties: lower object index, then lower detection index), each box once."""
    bg = num_classes
    matrix = np.zeros((num_classes + 1, num_classes + 1), np.int64)
    missed_per_image, false_per_image = [], []
    for p, t in zip(preds, targets, strict=True):
        keep = p["scores"] >= score_threshold
        d_boxes, d_labels = p["boxes"][keep].double(), p["labels"][keep].tolist()
        counted = ~(
            t.get("iscrowd", torch.zeros(len(t["labels"]))).bool()
            | t.get("ignore", torch.zeros(len(t["labels"]))).bool()
        )
        g_boxes, g_labels = t["boxes"][counted].double(), t["labels"][counted].tolist()
        iou = (
            box_iou(g_boxes, d_boxes)
            if len(g_boxes) and len(d_boxes)
            else torch.zeros(len(g_boxes), len(d_boxes))
        )
        pairs = [
            (-float(iou[g, d]), g, d)
            for g in range(len(g_labels))
            for d in range(len(d_labels))
            if float(iou[g, d]) >= iou_threshold
        ]
        used_g, used_d = set(), set()
        for _, g, d in sorted(pairs):
            if g in used_g or d in used_d:
                continue
            used_g.add(g)
            used_d.add(d)
            matrix[g_labels[g], d_labels[d]] += 1
        missed = [g for g in range(len(g_labels)) if g not in used_g]
        false = [d for d in range(len(d_labels)) if d not in used_d]
        for g in missed:
            matrix[g_labels[g], bg] += 1
        for d in false:
            matrix[bg, d_labels[d]] += 1
        missed_per_image.append(len(missed))
        false_per_image.append(len(false))
    return matrix, np.array(missed_per_image), np.array(false_per_image)


def _random_set(seed: int, num_images: int, num_classes: int):
    """Images with random objects (some crowd / ignored) and detections: jittered copies of the objects (some
    with another class, some duplicated), random boxes, equal scores and IoUs on a coarse grid, empty images."""
    g = torch.Generator().manual_seed(seed)
    preds, targets = [], []
    for i in range(num_images):
        n = 0 if i % 5 == 0 else int(torch.randint(1, 8, (1,), generator=g))
        xy = torch.randint(0, 40, (n, 2), generator=g).double() * 2  # a coarse grid: exact IoU ties
        wh = torch.randint(4, 20, (n, 2), generator=g).double() * 2
        boxes = torch.cat([xy, xy + wh], 1)
        labels = torch.randint(0, num_classes, (n,), generator=g)
        target = {"boxes": boxes, "labels": labels}
        if i % 3 == 1:
            target["iscrowd"] = torch.rand(n, generator=g) < 0.2
        if i % 4 == 2:
            target["ignore"] = torch.rand(n, generator=g) < 0.3
        copies = boxes.repeat(2, 1)[: int(torch.randint(0, 2 * n + 1, (1,), generator=g))] if n else boxes
        jitter = torch.randint(-3, 4, copies.shape, generator=g).double()
        extra = int(torch.randint(0, 4, (1,), generator=g)) if i % 7 else 0
        e_xy = torch.randint(0, 40, (extra, 2), generator=g).double() * 2
        d_boxes = torch.cat([copies + jitter, torch.cat([e_xy, e_xy + 12], 1)])
        d_labels = torch.cat(
            [labels.repeat(2)[: len(copies)], torch.randint(0, num_classes, (extra,), generator=g)]
        )
        swap = torch.rand(len(d_labels), generator=g) < 0.25
        d_labels = torch.where(swap, torch.randint(0, num_classes, d_labels.shape, generator=g), d_labels)
        scores = torch.randint(0, 10, (len(d_boxes),), generator=g).double() / 10
        preds.append({"boxes": d_boxes, "scores": scores, "labels": d_labels})
        targets.append(target)
    return preds, targets


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("score_threshold", [0.0, 0.35])
def test_batched_equals_per_image_loop(seed, score_threshold, monkeypatch):
    num_classes = 4
    preds, targets = _random_set(seed, 40, num_classes)
    expected, missed, false = _loop_reference(preds, targets, num_classes, 0.5, score_threshold)
    assert expected[:num_classes, :num_classes].trace() > 0 and missed.sum() > 0 and false.sum() > 0
    got = confusion_matrix(preds, targets, num_classes, iou_threshold=0.5, score_threshold=score_threshold)
    np.testing.assert_array_equal(got, expected)
    inputs = MatchInputs.from_lists(preds, targets)
    got_missed, got_false = image_errors(inputs, score_threshold)
    np.testing.assert_array_equal(got_missed, missed)
    np.testing.assert_array_equal(got_false, false)
    assert got_missed.dtype == got_false.dtype == np.int64 and len(got_missed) == 40
    # small blocks: many chunks of images, the same result
    monkeypatch.setattr("detforge.metrics.confusion._BLOCK_ELEMENTS", 64)
    np.testing.assert_array_equal(matrix_of_pairs(inputs, num_classes, score_threshold), expected)


def test_highest_iou_first_not_each_detections_best():
    """Detection 0 takes object 0 (IoU 1); detection 1, whose best is object 0 too, still takes object 1:
    greedy over all pairs, not each detection's best pair only."""
    target = {"boxes": torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 16]]), "labels": torch.tensor([0, 1])}
    pred = {
        "boxes": torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 12]]),
        "scores": torch.tensor([0.9, 0.9]),
        "labels": torch.tensor([0, 1]),
    }
    m = confusion_matrix([pred], [target], num_classes=2)
    np.testing.assert_array_equal(m, [[1, 0, 0], [0, 1, 0], [0, 0, 0]])
    np.testing.assert_array_equal(m, _loop_reference([pred], [target], 2, 0.5, 0.25)[0])


def test_empty_inputs_and_public_imports():
    assert public_confusion_matrix is confusion_matrix is plots_confusion_matrix
    assert confusion_matrix([], [], num_classes=3).shape == (4, 4)
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}
    target = {"boxes": torch.tensor([[0.0, 0, 5, 5]]), "labels": torch.tensor([2])}
    m = confusion_matrix([empty, empty], [target, {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0)}], 3)
    assert m[2, 3] == 1 and m.sum() == 1
    missed, false = image_errors(MatchInputs.from_lists([empty, empty], [target, target]), 0.25)
    assert missed.tolist() == [1, 1] and false.tolist() == [0, 0]


def test_bad_input_is_a_clear_error():
    pred = {"boxes": torch.zeros(2, 4), "scores": torch.ones(1), "labels": torch.zeros(2, dtype=torch.long)}
    target = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
    with pytest.raises(ValueError, match="prediction 0: 2 boxes, 1 scores, 2 labels"):
        confusion_matrix([pred], [target], num_classes=2)
    with pytest.raises(ValueError, match="1 predictions for 2 targets"):
        confusion_matrix([pred], [target, target], num_classes=2)
    with pytest.raises(ValueError, match="iou_threshold must be in"):
        confusion_matrix([], [], num_classes=2, iou_threshold=0.0)
    with pytest.raises(ValueError, match="num_classes must be >= 1"):
        confusion_matrix([], [], num_classes=0)
