import math
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from detforge.assigners import (
    FCOS_P3_P7_RANGES,
    FCOS_P3_P7_STRIDES,
    FCOSAssigner,
    assign_fcos_targets,
    fcos_targets_to_tensors,
)
from detforge.targets import pad_targets

# Small multi-level setup that exercises every level on a 64 x 80 image.
STRIDES = (4, 8, 16)
RANGES = ((-1.0, 12.0), (12.0, 24.0), (24.0, math.inf))
IMAGE_HW = (64, 80)
FEAT_SIZES = [(math.ceil(IMAGE_HW[0] / s), math.ceil(IMAGE_HW[1] / s)) for s in STRIDES]


def reference_batch(boxes_per_image, labels_per_image, feat_sizes, strides, ranges, radius=None):
    """Per-image, per-location Python reference, concatenated like the batched assigner's outputs."""
    labels, ltrb, centerness, matched = [], [], [], []
    for boxes, classes in zip(boxes_per_image, labels_per_image):
        levels = assign_fcos_targets(
            boxes, classes, feat_sizes, strides, ranges, center_sampling_radius=radius
        )
        flat = [t for level in levels for t in level]
        labels.append(torch.tensor([t.label for t in flat], dtype=torch.int64))
        ltrb.append(torch.tensor([t.ltrb for t in flat], dtype=torch.float32).reshape(-1, 4))
        centerness.append(torch.tensor([t.centerness for t in flat], dtype=torch.float32))
        matched.append(torch.tensor([t.matched_gt for t in flat], dtype=torch.int64))
    return torch.stack(labels), torch.stack(ltrb), torch.stack(centerness), torch.stack(matched)


def run_both(
    boxes_per_image, labels_per_image, strides=STRIDES, ranges=RANGES, feat_sizes=FEAT_SIZES, radius=None
):
    targets = [
        {
            "boxes": torch.tensor(b, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(c, dtype=torch.int64),
        }
        for b, c in zip(boxes_per_image, labels_per_image)
    ]
    gt_boxes, gt_labels, gt_mask = pad_targets(targets)
    gt_boxes[~gt_mask] = torch.tensor([-500.0, -500.0, 500.0, 500.0])  # padding must never be assigned
    ours = FCOSAssigner(strides, ranges, center_sampling_radius=radius)(
        feat_sizes, gt_boxes, gt_labels, gt_mask
    )
    ref = reference_batch(boxes_per_image, labels_per_image, feat_sizes, strides, ranges, radius)
    return ours, ref


def assert_same(ours, ref):
    labels, ltrb, centerness, matched = ref
    assert ours.labels.dtype == torch.int64 and ours.matched_gt.dtype == torch.int64
    assert ours.ltrb.dtype == torch.float32 and ours.centerness.dtype == torch.float32
    torch.testing.assert_close(ours.labels, labels, rtol=0, atol=0)
    torch.testing.assert_close(ours.matched_gt, matched, rtol=0, atol=0)
    torch.testing.assert_close(ours.ltrb, ltrb, rtol=0, atol=0)
    torch.testing.assert_close(ours.centerness, centerness, rtol=1e-6, atol=1e-6)


def random_box(rng: random.Random, height: int, width: int) -> list[float]:
    kind = rng.random()
    if kind < 0.4:  # integer corners: hits cell centres and range bounds exactly
        x1, y1 = rng.randint(-8, width - 2), rng.randint(-8, height - 2)
        return [x1, y1, x1 + rng.randint(1, 60), y1 + rng.randint(1, 60)]
    if kind < 0.5:  # tiny box, maybe between cell centres
        x1, y1 = rng.uniform(0, width - 3), rng.uniform(0, height - 3)
        return [x1, y1, x1 + rng.uniform(0.1, 3), y1 + rng.uniform(0.1, 3)]
    if kind < 0.55:  # larger than the image
        return [
            rng.uniform(-40, 0),
            rng.uniform(-40, 0),
            rng.uniform(width, width + 40),
            rng.uniform(height, 99),
        ]
    x1, y1 = rng.uniform(-5, width - 1), rng.uniform(-5, height - 1)
    return [x1, y1, x1 + rng.uniform(0.5, 70), y1 + rng.uniform(0.5, 70)]


@pytest.mark.parametrize("radius", [None, 1.5])
def test_matches_per_location_reference_on_random_batches(radius):
    rng = random.Random(1234 if radius is None else 99)
    for _ in range(12):
        boxes, labels = [], []
        for _ in range(3):
            n = rng.choice([0, 1, 2, 5, 7])
            image_boxes = [random_box(rng, *IMAGE_HW) for _ in range(n)]
            if n and rng.random() < 0.5:  # duplicate a box: an exact area tie
                image_boxes.append(list(image_boxes[0]))
            boxes.append(image_boxes)
            labels.append([rng.randrange(4) for _ in image_boxes])
        ours, ref = run_both(boxes, labels, radius=radius)
        assert_same(ours, ref)


coord = st.one_of(st.integers(-10, 90).map(float), st.floats(-10, 90, width=32))
box_strategy = st.tuples(coord, coord, coord, coord).map(
    lambda c: [min(c[0], c[2]), min(c[1], c[3]), max(c[0], c[2]), max(c[1], c[3])]
)


@settings(max_examples=25, deadline=None)
@given(
    boxes=st.lists(st.lists(box_strategy, max_size=4), min_size=1, max_size=3),
    radius=st.sampled_from([None, 1.0, 2.5]),
)
def test_property_matches_reference(boxes, radius):
    labels = [list(range(len(b))) for b in boxes]
    ours, ref = run_both(boxes, labels, radius=radius)
    assert_same(ours, ref)


def test_random_batches_have_positives_on_every_level():
    # Guards the random test above against comparing only backgrounds.
    rng = random.Random(1234)
    boxes = [[random_box(rng, *IMAGE_HW) for _ in range(7)] for _ in range(3)]
    ours, _ = run_both(boxes, [[0] * 7] * 3)
    starts = [0, 16 * 20, 16 * 20 + 8 * 10, 16 * 20 + 8 * 10 + 4 * 5]
    for lo, hi in zip(starts[:-1], starts[1:]):
        assert (ours.labels[:, lo:hi] >= 0).any()


def test_seed_worked_example():
    levels = assign_fcos_targets([[10, 20, 50, 80]], [3], [(16, 16), (8, 8), (4, 4)])
    (cls8, bbox8, ctr8), (cls16, _, _), (cls32, _, _) = fcos_targets_to_tensors(levels)
    expected = torch.full((16, 16), -1)
    expected[3:10, 1:6] = 3  # centres x = 12..44, y = 28..76 lie inside; no distance reaches 64
    assert torch.equal(cls8, expected)
    assert (cls16 == -1).all() and (cls32 == -1).all()
    assert bbox8[6, 3].tolist() == [18.0, 32.0, 22.0, 28.0]  # point (28, 52)
    assert ctr8[6, 3].item() == pytest.approx(math.sqrt(18 / 22 * 28 / 32))
    assert bbox8[0, 0].tolist() == [0.0] * 4 and ctr8[0, 0] == 0
    # The batched assigner on the seed's three scales agrees.
    assigner = FCOSAssigner((8, 16, 32), ((0, 64), (64, 128), (128, math.inf)))
    out = assigner(
        [(16, 16), (8, 8), (4, 4)],
        torch.tensor([[[10.0, 20, 50, 80]]]),
        torch.tensor([[3]]),
        torch.tensor([[True]]),
    )
    assert torch.equal(out.labels[0, :256].view(16, 16), expected)
    assert (out.labels[0, 256:] == -1).all()
    assert torch.equal(out.ltrb[0, :256].view(16, 16, 4), bbox8)


def test_large_box_goes_to_the_level_its_size_allows():
    levels = assign_fcos_targets([[0, 0, 300, 300]], [1], [(40, 40), (20, 20), (10, 10)])
    counts = [int((cls >= 0).sum()) for cls, _, _ in fcos_targets_to_tensors(levels)]
    # Distances reach >= 150 everywhere inside, so only the (128, inf) level is positive: the 9 x 9
    # stride-32 centres 16..272 that lie inside.
    assert counts == [0, 0, 81]


def test_no_gt_and_all_padding():
    assigner = FCOSAssigner(STRIDES, RANGES)
    out = assigner(
        FEAT_SIZES,
        torch.zeros(2, 0, 4),
        torch.zeros(2, 0, dtype=torch.int64),
        torch.zeros(2, 0, dtype=torch.bool),
    )
    num_points = sum(h * w for h, w in FEAT_SIZES)
    assert out.labels.shape == (2, num_points) and (out.labels == -1).all()
    assert out.ltrb.shape == (2, num_points, 4) and (out.ltrb == 0).all()
    assert (out.centerness == 0).all() and (out.matched_gt == -1).all()
    masked = assigner(
        FEAT_SIZES, torch.tensor([[[0.0, 0, 50, 50]]]), torch.tensor([[2]]), torch.tensor([[False]])
    )
    assert (masked.labels == -1).all()
    ours, ref = run_both([[], []], [[], []])
    assert_same(ours, ref)


def test_one_gt_border_boxes_and_box_larger_than_image():
    height, width = IMAGE_HW
    cases = [
        [[10.0, 12.0, 30.0, 40.0]],  # one GT
        [[0.0, 0.0, 20.0, 30.0]],  # top-left border
        [[width - 20.0, height - 30.0, width, height]],  # bottom-right border
        [[-30.0, -30.0, width + 30.0, height + 30.0]],  # larger than the image
    ]
    for boxes in cases:
        ours, ref = run_both([boxes], [[1]])
        assert_same(ours, ref)
        assert (ours.labels >= 0).any()
        assert (ours.ltrb[ours.labels >= 0] > 0).all()


def test_box_smaller_than_stride():
    # No stride-4 centre (2, 6, 10, ...) lies strictly inside [7, 7, 9, 9]: the box gets no positive.
    ours, ref = run_both([[[7.0, 7.0, 9.0, 9.0]]], [[0]])
    assert_same(ours, ref)
    assert (ours.labels == -1).all()
    # [5, 5, 7, 7] holds the centre (6, 6) of cell (1, 1) on stride 4.
    ours, ref = run_both([[[5.0, 5.0, 7.0, 7.0]]], [[0]])
    assert_same(ours, ref)
    assert (ours.labels >= 0).nonzero().tolist() == [[0, 1 * 20 + 1]]


def test_point_on_box_edge_is_not_inside():
    # Cell centres at 2, 6, 10: a box from 2 to 10 holds only 6 strictly.
    ours, ref = run_both([[[2.0, 2.0, 10.0, 10.0]]], [[0]])
    assert_same(ours, ref)
    assert (ours.labels >= 0).nonzero()[:, 1].tolist() == [1 * 20 + 1]


def test_range_bounds_are_inclusive():
    # Point (6, 6) in box [-6, -6, 18, 18]: ltrb = (12, 12, 12, 12), max exactly 12 -> both level 0 (<= 12)
    # and level 1 (>= 12) accept the box at their own locations.
    ours, ref = run_both([[[-6.0, -6.0, 18.0, 18.0]]], [[0]])
    assert_same(ours, ref)
    assert ours.labels[0, 1 * 20 + 1] == 0  # stride 4, cell (1, 1) = point (6, 6), max distance 12
    assert ours.labels[0, 16 * 20 + 0] == 0  # stride 8, cell (0, 0) = point (4, 4), max distance 14
    # Half the box side equals the level's upper bound: only the exact centre (14, 14) fits level 0.
    ours, ref = run_both([[[2.0, 2.0, 26.0, 26.0]]], [[0]])
    assert_same(ours, ref)
    assert (ours.labels[0, : 16 * 20] >= 0).nonzero()[:, 0].tolist() == [3 * 20 + 3]


def test_nested_boxes_smallest_wins_and_ties_go_to_lowest_index():
    outer, inner = [0.0, 0.0, 40.0, 40.0], [4.0, 4.0, 36.0, 36.0]
    ours, ref = run_both([[outer, inner]], [[0, 1]])
    assert_same(ours, ref)
    # Stride 8, cell (2, 2) = point (20, 20): both boxes fit level 1 there (max distances 20 and 16);
    # the inner box (smaller area) wins.
    assert ours.matched_gt[0, 16 * 20 + 2 * 10 + 2] == 1
    assert (ours.matched_gt == 0).any()
    assert (ours.labels[ours.matched_gt == 1] == 1).all()
    # Two identical boxes: the lower index wins everywhere.
    box = [8.0, 8.0, 30.0, 28.0]
    ours, ref = run_both([[box, box, box]], [[2, 3, 4]])
    assert_same(ours, ref)
    assert (ours.matched_gt[ours.labels >= 0] == 0).all() and (ours.labels >= 0).any()


def test_batch_with_different_gt_counts():
    boxes = [[[0.0, 0.0, 30.0, 30.0]], [], [[5.0, 5.0, 60.0, 50.0], [20.0, 8.0, 28.0, 19.0], [1, 1, 79, 63]]]
    labels = [[0], [], [1, 2, 3]]
    ours, ref = run_both(boxes, labels)
    assert_same(ours, ref)
    assert (ours.labels[1] == -1).all()
    assert set(ours.matched_gt[2].unique().tolist()) == {-1, 0, 1, 2}


def test_points_order_matches_locations():
    assigner = FCOSAssigner(STRIDES, RANGES)
    points, strides = assigner.points(FEAT_SIZES)
    levels = assign_fcos_targets([], [], FEAT_SIZES, STRIDES, RANGES)
    expected = torch.tensor([[(t.fx + 0.5) * t.stride, (t.fy + 0.5) * t.stride] for lv in levels for t in lv])
    assert torch.equal(points, expected)
    assert torch.equal(strides, torch.tensor([float(t.stride) for lv in levels for t in lv]))
    assert points.dtype == strides.dtype == torch.float32


def test_default_is_p3_p7():
    assigner = FCOSAssigner()
    assert assigner.strides == FCOS_P3_P7_STRIDES == (8, 16, 32, 64, 128)
    assert assigner.regress_ranges == FCOS_P3_P7_RANGES
    assert assigner.regress_ranges[0] == (-1.0, 64.0) and math.isinf(assigner.regress_ranges[-1][1])


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="one regress range per stride"):
        FCOSAssigner((8, 16), ((0, 64),))
    with pytest.raises(ValueError, match="positive"):
        FCOSAssigner((0, 16), ((0, 64), (64, 128)))
    with pytest.raises(ValueError, match="lo < hi"):
        FCOSAssigner((8,), ((64, 0),))
    with pytest.raises(ValueError, match="center_sampling_radius"):
        FCOSAssigner((8,), ((0, 64),), center_sampling_radius=0)
    assigner = FCOSAssigner(STRIDES, RANGES)
    boxes = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [0.0, float("nan"), 5.0, 5.0]]])
    with pytest.raises(ValueError, match=r"gt_boxes\[0, 1\]"):
        assigner(FEAT_SIZES, boxes, torch.zeros(1, 2, dtype=torch.int64), torch.ones(1, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"gt_labels\[0, 0\] = -1"):
        assigner(FEAT_SIZES, boxes[:, :1], torch.full((1, 1), -1), torch.ones(1, 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="feature sizes"):
        assigner(
            FEAT_SIZES[:2],
            boxes[:, :1],
            torch.zeros(1, 1, dtype=torch.int64),
            torch.ones(1, 1, dtype=torch.bool),
        )
    with pytest.raises(ValueError, match=r"\[B, G\]"):
        assigner(FEAT_SIZES, boxes, torch.zeros(1, 3, dtype=torch.int64), torch.ones(1, 2, dtype=torch.bool))
