"""Faster R-CNN's batched matching and sampling against torchvision's per-image Matcher / sampler."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection._utils import Matcher
from torchvision.ops import box_iou

from detforge.assigners.rcnn import BELOW_LOW, BETWEEN, hash_priority, match_boxes, sample_balanced


def _boxes(n: int, g: torch.Generator, size: float = 100.0) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=g) * size
    wh = torch.rand(n, 2, generator=g) * size / 3 + 1
    return torch.cat([xy, xy + wh], 1)


@pytest.mark.parametrize("low_quality", [True, False])
@pytest.mark.parametrize("chunk_elements", [1 << 22, 7])  # one chunk, and many small ones
def test_match_equals_torchvision_matcher(low_quality, chunk_elements):
    g = torch.Generator().manual_seed(0)
    anchors = _boxes(300, g)
    counts = [5, 0, 12]
    gts = [_boxes(n, g) for n in counts]
    gt_boxes = torch.zeros(3, 12, 4)
    gt_mask = torch.zeros(3, 12, dtype=torch.bool)
    for i, b in enumerate(gts):
        gt_boxes[i, : len(b)], gt_mask[i, : len(b)] = b, True
    matched, _ = match_boxes(anchors[None], gt_boxes, gt_mask, 0.7, 0.3, low_quality, chunk_elements)
    matcher = Matcher(0.7, 0.3, allow_low_quality_matches=low_quality)
    for i, b in enumerate(gts):
        if len(b) == 0:
            assert (matched[i] == BELOW_LOW).all()
            continue
        expected = matcher(box_iou(b, anchors))
        assert torch.equal(matched[i], expected), i
    assert (matched == BETWEEN).any() and (matched >= 0).any()


def test_matching_2000_boxes_in_chunks_is_exact():
    g = torch.Generator().manual_seed(1)
    anchors, gt = _boxes(3000, g, 400.0), _boxes(2000, g, 400.0)
    mask = torch.ones(1, 2000, dtype=torch.bool)
    whole, _ = match_boxes(anchors[None], gt[None], mask, 0.7, 0.3, True, chunk_elements=1 << 30)
    chunked, _ = match_boxes(anchors[None], gt[None], mask, 0.7, 0.3, True, chunk_elements=100_000)
    assert torch.equal(whole, chunked)


def test_sampler_counts_and_fraction():
    g = torch.Generator().manual_seed(2)
    labels = torch.randint(-1, 2, (4, 500), generator=g)
    labels[1] = 0  # no positives
    labels[2, :3] = 1  # few positives
    labels[2, 3:] = 0
    pos, neg = sample_balanced(labels, 64, 0.25)
    assert not (pos & neg).any() and (labels[pos] > 0).all() and (labels[neg] == 0).all()
    for i in range(4):
        npos = int((labels[i] > 0).sum())
        assert int(pos[i].sum()) == min(16, npos)
        assert int(pos[i].sum() + neg[i].sum()) == 64


def test_priorities_pick_the_highest_and_hard_negatives():
    labels = torch.tensor([[1, 1, 1, 0, 0, 0, 0, -1]])
    priority = torch.tensor([[0.1, 0.9, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0]])
    loss = torch.tensor([[0.0, 0.0, 0.0, 0.2, 3.0, 0.1, 1.0, 9.0]])
    pos, neg = sample_balanced(labels, 4, 0.5, priority=priority, negative_priority=loss)
    assert pos[0].nonzero().flatten().tolist() == [1, 2]
    assert neg[0].nonzero().flatten().tolist() == [
        4,
        6,
    ]  # the two highest-loss negatives, not the ignored one


def test_hash_priority_is_fixed_per_column():
    a = hash_priority((2, 1000))
    assert torch.equal(a[0], a[1]) and torch.equal(a, hash_priority((2, 1000)))
    assert a.unique().numel() == 1000
