"""MaskDataset: instance masks to boxes, compared with a brute-force loop."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from detforge.data.masks import MaskDataset, instance_boxes


def test_boxes_from_instance_masks(make_masks):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = MaskDataset(make_masks())
    assert len(ds) == 2 and ds.class_names == ["object"]
    torch.testing.assert_close(
        ds[0][1]["boxes"], torch.tensor([[3.0, 2.0, 8.0, 10.0], [30.0, 20.0, 40.0, 30.0]])
    )
    assert ds[0][1]["labels"].tolist() == [0, 0]
    assert ds[1][1]["boxes"].shape == (0, 4)


def test_instance_boxes_match_brute_force():
    rng = np.random.default_rng(0)
    mask = rng.integers(0, 4, (13, 17)).astype(np.uint8)
    mask[mask == 2] = 0  # an id gap
    expected = []
    for i in sorted(set(np.unique(mask)) - {0}):
        ys, xs = np.nonzero(mask == i)
        expected.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    np.testing.assert_array_equal(instance_boxes(mask), np.asarray(expected, np.float32))
    assert instance_boxes(np.zeros((4, 4), np.uint8)).shape == (0, 4)


def test_image_without_mask_is_skipped(make_masks):
    root = make_masks()
    (root / "PedMasks" / "p2_mask.png").unlink()
    with pytest.warns(UserWarning, match=r"missing_mask.*p2\.png"):
        ds = MaskDataset(root)
    assert len(ds) == 1


def test_missing_folder():
    with pytest.raises(FileNotFoundError, match="PNGImages"):
        MaskDataset("nowhere")
