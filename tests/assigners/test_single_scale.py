import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from detforge.assigners.single_scale import (
    SingleScaleAssigner,
    assign_phantom_targets,
    decode_single_scale_boxes,
)
from detforge.targets import pad_targets


def _reference(boxes: list[list[float]], feat_h: int, feat_w: int, stride: float):
    """Brute force, one cell at a time: which boxes have their (clamped) centre here; the smallest wins."""
    cls = [[0.0] * feat_w for _ in range(feat_h)]
    bbox = [[[0.0] * 4 for _ in range(feat_w)] for _ in range(feat_h)]
    matched = [[-1] * feat_w for _ in range(feat_h)]
    for r in range(feat_h):
        for c in range(feat_w):
            best = None
            for g, (x1, y1, x2, y2) in enumerate(boxes):
                cx, cy = (x1 + x2) / 2 / stride, (y1 + y2) / 2 / stride
                col = min(max(math.floor(cx), 0), feat_w - 1)
                row = min(max(math.floor(cy), 0), feat_h - 1)
                if (row, col) != (r, c):
                    continue
                area = (x2 - x1) * (y2 - y1)
                if best is None or area < best[0]:
                    best = (area, g)
            if best is not None:
                g = best[1]
                x1, y1, x2, y2 = boxes[g]
                cls[r][c] = 1.0
                bbox[r][c] = [
                    (x1 + x2) / 2 / stride - c,
                    (y1 + y2) / 2 / stride - r,
                    math.log((x2 - x1) / stride),
                    math.log((y2 - y1) / stride),
                ]
                matched[r][c] = g
    return torch.tensor(cls), torch.tensor(bbox), torch.tensor(matched)


def _check_against_reference(per_image: list[list[list[float]]], feat_h: int, feat_w: int, stride: float):
    targets = [{"boxes": torch.tensor(b, dtype=torch.float32).reshape(-1, 4)} for b in per_image]
    for t in targets:
        t["labels"] = torch.zeros(t["boxes"].shape[0], dtype=torch.int64)
    gt_boxes, _, gt_mask = pad_targets(targets)
    out = SingleScaleAssigner(stride)((feat_h, feat_w), gt_boxes, gt_mask)
    assert out.cls.shape == (len(per_image), feat_h, feat_w)
    assert out.bbox.shape == (len(per_image), feat_h, feat_w, 4)
    assert out.matched_gt.dtype == torch.int64
    for i, boxes in enumerate(per_image):
        cls, bbox, matched = _reference(boxes, feat_h, feat_w, stride)
        assert torch.equal(out.cls[i], cls)
        assert torch.equal(out.matched_gt[i], matched)
        assert torch.allclose(out.bbox[i], bbox, atol=1e-5)
        # The per-image seed API follows the same rules.
        seed_cls, seed_bbox = assign_phantom_targets(
            torch.tensor(boxes).reshape(-1, 4), feat_h, feat_w, stride
        )
        assert torch.equal(seed_cls, cls)
        assert torch.allclose(seed_bbox, bbox, atol=1e-5)


def test_seed_worked_example():
    """The [10, 15, 40, 50] face at stride 4 on a 32 x 32 map: centre (25, 32.5) -> cell (row 8, col 6)."""
    cls, bbox = assign_phantom_targets(torch.tensor([[10.0, 15.0, 40.0, 50.0]]), 32, 32, 4)
    assert cls.shape == (32, 32) and bbox.shape == (32, 32, 4)
    assert cls.sum() == 1.0 and cls[8, 6] == 1.0
    expected = torch.tensor([0.25, 0.125, math.log(30 / 4), math.log(35 / 4)])
    assert torch.allclose(bbox[8, 6], expected)
    bbox[8, 6] = 0
    assert (bbox == 0).all()


@st.composite
def _batches(draw):
    stride = draw(st.sampled_from([1.0, 4.0, 8.0]))
    feat_h, feat_w = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    img_h, img_w = feat_h * stride, feat_w * stride
    quarter = st.integers(
        0, 4 * int(max(img_h, img_w) * 1.5)
    )  # coordinates on a 0.25 px grid, some past the map

    def box():
        x1, y1 = draw(quarter) / 4, draw(quarter) / 4
        w, h = draw(st.integers(1, 4 * int(img_w + 8))) / 4, draw(st.integers(1, 4 * int(img_h + 8))) / 4
        return [x1 - img_w / 4, y1 - img_h / 4, x1 - img_w / 4 + w, y1 - img_h / 4 + h]

    batch = [[box() for _ in range(draw(st.integers(0, 6)))] for _ in range(draw(st.integers(1, 3)))]
    return batch, feat_h, feat_w, stride


@settings(max_examples=60, deadline=None)
@given(_batches())
def test_matches_brute_force_on_random_batches(case):
    batch, feat_h, feat_w, stride = case
    _check_against_reference(batch, feat_h, feat_w, stride)


@pytest.mark.parametrize(
    "name,boxes",
    [
        ("one", [[3.0, 5.0, 11.0, 9.0]]),
        (
            "border",
            [[0.0, 0.0, 6.0, 6.0], [26.0, 20.0, 32.0, 32.0]],
        ),  # touches the image's top-left / bottom-right
        ("smaller_than_stride", [[17.0, 9.0, 18.5, 10.0]]),
        ("larger_than_image", [[-20.0, -10.0, 60.0, 50.0]]),
        ("centre_past_the_edge", [[30.0, 30.0, 40.0, 44.0]]),
        ("nested_same_cell", [[0.0, 0.0, 32.0, 32.0], [12.0, 12.0, 20.0, 20.0]]),
        ("equal_area_same_cell", [[14.0, 13.0, 18.0, 19.0], [13.0, 14.0, 19.0, 18.0]]),
    ],
)
def test_edge_cases_match_brute_force(name, boxes):
    _check_against_reference([boxes], 8, 8, 4.0)


def test_two_faces_in_one_cell_smaller_wins():
    big, small = [0.0, 0.0, 32.0, 32.0], [14.0, 14.0, 18.0, 18.0]  # both centred at (16, 16) -> cell (4, 4)
    for boxes, small_idx in (([big, small], 1), ([small, big], 0)):
        gt = torch.tensor([boxes])
        out = SingleScaleAssigner(4)((8, 8), gt, torch.ones(1, 2, dtype=torch.bool))
        assert out.cls.sum() == 1 and out.matched_gt[0, 4, 4] == small_idx
        assert torch.allclose(out.bbox[0, 4, 4, 2:], torch.tensor([0.0, 0.0]))  # log(4 / 4)
    # Equal areas: the lower index wins.
    a, b = [14.0, 13.0, 18.0, 19.0], [13.0, 14.0, 19.0, 18.0]
    out = SingleScaleAssigner(4)((8, 8), torch.tensor([[a, b]]), torch.ones(1, 2, dtype=torch.bool))
    assert out.matched_gt[0, 4, 4] == 0


def test_no_gt_and_empty_images_in_a_batch():
    out = SingleScaleAssigner(4)((5, 7), torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.bool))
    assert out.cls.shape == (2, 5, 7) and out.cls.sum() == 0
    assert (out.matched_gt == -1).all() and (out.bbox == 0).all()
    cls, bbox = assign_phantom_targets(torch.zeros(0, 4), 5, 7, 4)
    assert cls.shape == (5, 7) and cls.sum() == 0 and bbox.shape == (5, 7, 4)
    _check_against_reference([[], [[1.0, 1.0, 9.0, 9.0], [20.0, 4.0, 28.0, 10.0]], []], 5, 7, 4.0)


def test_padding_is_ignored_even_if_it_looks_like_a_box():
    gt = torch.tensor([[[0.0, 0.0, 8.0, 8.0], [0.0, 0.0, 2.0, 2.0]]])
    mask = torch.tensor([[True, False]])
    out = SingleScaleAssigner(4)((4, 4), gt, mask)
    assert out.matched_gt[0, 1, 1] == 0 and out.cls.sum() == 1


def test_decode_inverts_the_targets():
    boxes = torch.tensor([[10.0, 15.0, 40.0, 50.0], [60.0, 2.0, 63.0, 30.0], [0.0, 0.0, 90.0, 70.0]])
    out = SingleScaleAssigner(8)((8, 8), boxes[None], torch.ones(1, 3, dtype=torch.bool))
    decoded = decode_single_scale_boxes(out.bbox, 8)  # [1, 8, 8, 4]
    pos = out.matched_gt[0] >= 0
    assert torch.allclose(decoded[0][pos], boxes[out.matched_gt[0][pos]], atol=1e-4)


def test_bad_input_raises_with_the_box_named():
    mask = torch.ones(1, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"gt_boxes\[0, 1\]"):
        SingleScaleAssigner(4)((8, 8), torch.tensor([[[0.0, 0.0, 4.0, 4.0], [5.0, 5.0, 5.0, 9.0]]]), mask)
    with pytest.raises(ValueError, match=r"gt_boxes\[0, 0\]"):
        SingleScaleAssigner(4)(
            (8, 8), torch.tensor([[[0.0, float("nan"), 4.0, 4.0], [0.0, 0.0, 4.0, 4.0]]]), mask
        )
    with pytest.raises(ValueError, match="stride"):
        SingleScaleAssigner(0)
    with pytest.raises(ValueError, match="feat_size"):
        SingleScaleAssigner(4)((0, 8), torch.zeros(1, 0, 4), torch.zeros(1, 0, dtype=torch.bool))
    with pytest.raises(ValueError, match="gt_mask"):
        SingleScaleAssigner(4)((8, 8), torch.zeros(1, 2, 4), torch.ones(1, 3, dtype=torch.bool))
