"""k-means anchors with the 1 - IoU distance, and the training boxes' sizes of a data set."""

import numpy as np
import pytest
import torch

from detforge.anchors import dataset_boxes_wh, kmeans_anchors, shape_iou
from detforge.data.base import DetectionDataset, Record


def test_shape_iou():
    iou = shape_iou(torch.tensor([[10.0, 10.0], [20.0, 5.0]]), torch.tensor([[10.0, 10.0], [5.0, 20.0]]))
    assert torch.allclose(iou, torch.tensor([[1.0, 50 / 150], [50 / 150, 25 / 175]]))


def test_kmeans_finds_separated_clusters_sorted_by_area():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[8.0, 8.0], [30.0, 15.0], [15.0, 30.0], [60.0, 60.0], [120.0, 80.0]])
    wh = (centres.repeat_interleave(40, 0) * (1 + 0.05 * torch.randn(200, 2, generator=g))).abs()
    anchors, mean_iou = kmeans_anchors(wh, k=5, seed=1)
    assert anchors.shape == (5, 2)
    areas = anchors.prod(1)
    assert (areas[1:] >= areas[:-1]).all()
    expected = centres[centres.prod(1).argsort()]
    assert torch.allclose(anchors, expected, rtol=0.05)
    assert mean_iou == pytest.approx(float(shape_iou(wh, anchors).max(1).values.mean()), rel=1e-5)
    assert mean_iou > 0.85
    again, _ = kmeans_anchors(wh, k=5, seed=1)
    assert torch.equal(anchors, again)


def test_kmeans_needs_k_boxes():
    with pytest.raises(ValueError, match="at least k=9"):
        kmeans_anchors(torch.tensor([[1.0, 2.0], [0.0, 3.0]]), k=9)


def test_dataset_boxes_are_letterboxed_to_imgsz_without_reading_images():
    records = [
        Record(0, "/nonexistent/a.jpg", np.array([[0, 0, 40, 20], [10, 10, 30, 50]], np.float32),
               np.array([0, 1]), height=100, width=200, iscrowd=np.array([False, True])),
        Record(1, "/nonexistent/b.jpg", np.zeros((0, 4), np.float32), np.zeros(0, np.int64), height=50, width=50),
        Record(2, "/nonexistent/c.jpg", np.array([[5, 5, 15, 25]], np.float32), np.array([1]), height=50,
               width=25),
    ]  # fmt: skip
    wh = dataset_boxes_wh(DetectionDataset(records, ["a", "b"]), imgsz=100)
    # image a: longer side 200 -> 100 (x0.5), the crowd box left out; image c: longer side 50 -> 100 (x2)
    assert torch.allclose(wh, torch.tensor([[20.0, 10.0], [20.0, 40.0]]))
