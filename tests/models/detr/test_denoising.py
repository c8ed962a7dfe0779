"""Contrastive denoising queries: group layout, attention mask, noise bounds, empty targets."""

from __future__ import annotations

import torch

from detforge.models.detr.denoising import denoising_queries
from detforge.targets import pad_targets

SIZES = torch.tensor([[64, 96], [64, 96]])


def _targets():
    return [
        {
            "boxes": torch.tensor([[4.0, 4.0, 20.0, 28.0], [30.0, 10.0, 70.0, 50.0]]),
            "labels": torch.tensor([0, 2]),
        },
        {"boxes": torch.tensor([[10.0, 20.0, 40.0, 60.0]]), "labels": torch.tensor([1])},
    ]


def test_layout_and_attention_mask():
    boxes, labels, mask = pad_targets(_targets())
    dn = denoising_queries(
        boxes,
        labels,
        mask,
        SIZES,
        3,
        num_matching_queries=5,
        num_denoising=7,
        label_noise_ratio=0.0,
        generator=torch.Generator().manual_seed(0),
    )
    g, groups = 2, 3  # 7 // 2
    d = 2 * g * groups
    assert dn.num_groups == groups and dn.labels.shape == (2, d) and dn.boxes.shape == (2, d, 4)
    # reference mask, one query at a time
    total = d + 5
    expected = torch.zeros(total, total, dtype=torch.bool)
    for i in range(total):
        for j in range(total):
            if i >= d and j < d:
                expected[i, j] = True  # matching queries never see denoising ones
            elif i < d and j < d and i // (2 * g) != j // (2 * g):
                expected[i, j] = True  # groups do not see each other
    assert torch.equal(dn.attn_mask, expected)
    # positives are the first half of each group, on real boxes only; padded slots carry the padding label
    for k in range(d):
        first_half = (k % (2 * g)) < g
        assert dn.gt_index[k] == k % g
        assert bool(dn.positive[0, k]) == first_half
        assert bool(dn.positive[1, k]) == (first_half and k % g == 0)
        assert bool(dn.valid[1, k]) == (k % g == 0)
    assert (dn.labels[1][~dn.valid[1]] == 3).all()
    assert torch.equal(dn.labels[0], labels[0, dn.gt_index])  # no label noise at ratio 0


def test_noise_bounds():
    boxes, labels, mask = pad_targets(_targets())
    dn = denoising_queries(
        boxes,
        labels,
        mask,
        SIZES,
        3,
        num_matching_queries=4,
        num_denoising=400,
        box_noise_scale=0.4,
        label_noise_ratio=1.0,
        generator=torch.Generator().manual_seed(1),
    )
    scale = torch.tensor([96.0, 64.0, 96.0, 64.0])
    gt = boxes[:, dn.gt_index] / scale  # [B, D, 4] normalised xyxy
    got = dn.boxes
    got_xyxy = torch.cat([got[..., :2] - got[..., 2:] / 2, got[..., :2] + got[..., 2:] / 2], -1)
    half = ((gt[..., 2:] - gt[..., :2]) / 2).repeat(1, 1, 2) * 0.4
    # compare the sorted corners on each axis: noise moves each corner by < half (pos) or in [half, 2 half) (neg)
    err = (got_xyxy - gt).abs()
    pos, neg = dn.positive, dn.valid & ~dn.positive
    assert (err[pos] <= half[pos] + 1e-6).all()
    clipped = (got_xyxy == 0) | (got_xyxy == 1)
    assert (err[neg] <= 2 * half[neg] + 1e-6).all()
    assert (
        (err[neg] >= half[neg] - 1e-6) | clipped[neg]
    ).float().mean() > 0.9  # up to corner swaps / clipping
    assert ((got >= 0) & (got <= 1)).all()
    # label noise: about half the copies get a random label (ratio 1 -> probability 0.5, a third stay equal)
    changed = (dn.labels != labels[:, dn.gt_index])[dn.valid].float().mean()
    assert 0.2 < changed < 0.5
    assert ((dn.labels[dn.valid] >= 0) & (dn.labels[dn.valid] < 3)).all()


def test_empty_targets_give_none():
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}] * 2
    boxes, labels, mask = pad_targets(empty)
    assert denoising_queries(boxes, labels, mask, SIZES, 3, num_matching_queries=5) is None
    boxes, labels, mask = pad_targets(_targets())
    assert denoising_queries(boxes, labels, mask, SIZES, 3, num_matching_queries=5, num_denoising=0) is None
