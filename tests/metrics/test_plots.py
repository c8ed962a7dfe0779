"""Confusion matrix against a brute-force count, and the PNG writers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from detforge.metrics import confusion_matrix, evaluate_coco_files, plot_confusion_matrix, plot_pr_curves


def _pred(boxes, labels, scores=None) -> dict:
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    scores = torch.ones(len(boxes)) if scores is None else torch.tensor(scores)
    return {"boxes": boxes, "labels": torch.tensor(labels, dtype=torch.long), "scores": scores}


def _target(boxes, labels, **extra) -> dict:
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.long),
        **extra,
    }


def test_confusion_matrix_cases() -> None:
    a, b, far = [0, 0, 10, 10], [100, 100, 120, 120], [300, 300, 310, 310]
    preds = [
        _pred([a, b, far], [0, 0, 1]),  # right class, wrong class, false detection
        _pred([], []),  # empty image with one missed object
        _pred([a], [1], scores=[0.1]),  # below the score threshold: not counted
        _pred([a, a], [0, 0]),  # duplicate: the second is a false detection
    ]
    targets = [
        _target([a, b], [0, 1]),
        _target([b], [1]),
        _target([], []),
        _target([a, b], [0, 1], iscrowd=torch.tensor([0, 1])),  # the crowd is skipped
    ]
    m = confusion_matrix(preds, targets, num_classes=2)
    expected = np.zeros((3, 3), np.int64)
    expected[0, 0] += 1  # image 0: a -> a
    expected[1, 0] += 1  # image 0: true 1 predicted 0
    expected[2, 1] += 1  # image 0: false detection of class 1
    expected[1, 2] += 1  # image 1: missed class 1
    expected[0, 0] += 1  # image 3
    expected[2, 0] += 1  # image 3 duplicate
    np.testing.assert_array_equal(m, expected)


def test_confusion_matrix_takes_highest_iou_first() -> None:
    gt = _target([[0, 0, 10, 10], [0, 0, 10, 14]], [0, 1])
    pred = _pred([[0, 0, 10, 13]], [1])  # IoU 0.77 with the first, 0.93 with the second
    m = confusion_matrix([pred], [gt], num_classes=2)
    assert m[1, 1] == 1 and m[0, 2] == 1 and m.sum() == 2
    with pytest.raises(ValueError, match="label outside"):
        confusion_matrix([_pred([[0, 0, 1, 1]], [5])], [_target([], [])], num_classes=2)


def test_pngs_are_written(tmp_path) -> None:
    gt = {
        "images": [{"id": 1}, {"id": 2}],
        "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}, {"id": 9, "name": "never"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 3, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0},
            {"id": 2, "image_id": 2, "category_id": 7, "bbox": [5, 5, 50, 40], "area": 2000, "iscrowd": 0},
        ],
    }
    results = [
        {"image_id": 1, "category_id": 3, "bbox": [0, 0, 10, 11], "score": 0.9},
        {"image_id": 2, "category_id": 7, "bbox": [30, 30, 50, 40], "score": 0.8},
    ]
    result = evaluate_coco_files(gt, results)
    pr = plot_pr_curves(result, tmp_path / "pr.png")
    cm = plot_confusion_matrix(
        np.array([[3, 1, 0], [0, 2, 1], [1, 0, 0]]), tmp_path / "sub" / "cm.png", ["a", "b"]
    )
    for path in (pr, cm):
        with Image.open(path) as im:
            assert im.format == "PNG" and im.size[0] > 100
    with pytest.raises(ValueError, match="iou_threshold 0.3"):
        plot_pr_curves(result, tmp_path / "x.png", iou_threshold=0.3)
