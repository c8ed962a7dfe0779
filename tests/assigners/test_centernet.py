"""CenterNet targets: the radius rule (corrected and legacy) against worked values and its IoU property, and
the batched heatmap / size / offset targets against a per-image, per-object loop (the original
``draw_umich_gaussian``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from detforge.assigners.centernet import CenterNetTargetBuilder, gaussian_radius
from detforge.targets import pad_targets

# Worked by hand (plain Python, the formulas below) for (h, w, min_overlap):
# corrected: the three cases' radii and their minimum; legacy: the original code's three values and minimum.
WORKED = [
    # h, w, o, corrected (r1, r2, r3), legacy (r1, r2, r3)
    (10, 10, 0.7, (0.925148, 0.816700, 0.976143), (19.074852, 36.733201, 2.733201)),
    (8, 32, 0.7, (1.163240, 1.011118, 1.288426), (38.836760, 75.955528, 3.607594)),
    (3, 5, 0.7, (0.345832, 0.304418, 0.367941), (7.654168, 14.782330, 1.030234)),
    (40, 20, 0.5, (4.833885, 3.819660, 5.615528), (55.166115, 104.721360, 11.231056)),
]


def corrected_radii(h: float, w: float, o: float) -> tuple[float, float, float]:
    """The three quadratics solved properly: r = (-b - sqrt(b^2 - 4ac)) / (2a) for cases 1 and 2 (the smaller
    root), (-b + sqrt(...)) / (2a) for case 3 (the positive one)."""
    a1, b1, c1 = 1.0, -(h + w), w * h * (1 - o) / (1 + o)  # shifted by r in x and y
    a2, b2, c2 = 4.0, -2 * (h + w), (1 - o) * w * h  # both corners inwards by r
    a3, b3, c3 = 4 * o, 2 * o * (h + w), (o - 1) * w * h  # both corners outwards by r
    r1 = (-b1 - math.sqrt(b1 * b1 - 4 * a1 * c1)) / (2 * a1)
    r2 = (-b2 - math.sqrt(b2 * b2 - 4 * a2 * c2)) / (2 * a2)
    r3 = (-b3 + math.sqrt(b3 * b3 - 4 * a3 * c3)) / (2 * a3)
    return r1, r2, r3


def legacy_radii(h: float, w: float, o: float) -> tuple[float, float, float]:
    """The original CornerNet / CenterNet ``gaussian_radius``, line by line."""
    a1 = 1
    b1 = h + w
    c1 = w * h * (1 - o) / (1 + o)
    r1 = (b1 + math.sqrt(b1**2 - 4 * a1 * c1)) / 2
    a2 = 4
    b2 = 2 * (h + w)
    c2 = (1 - o) * w * h
    r2 = (b2 + math.sqrt(b2**2 - 4 * a2 * c2)) / 2
    a3 = 4 * o
    b3 = -2 * o * (h + w)
    c3 = (o - 1) * w * h
    r3 = (b3 + math.sqrt(b3**2 - 4 * a3 * c3)) / 2
    return r1, r2, r3


@pytest.mark.parametrize("h, w, o, corrected, legacy", WORKED)
def test_radius_worked_values(h, w, o, corrected, legacy):
    assert corrected_radii(h, w, o) == pytest.approx(corrected, abs=1e-6)
    assert legacy_radii(h, w, o) == pytest.approx(legacy, abs=1e-6)
    got = gaussian_radius(torch.tensor([float(h)], dtype=torch.float64), float(w), o)
    assert float(got) == pytest.approx(min(corrected), abs=1e-6)
    got_legacy = gaussian_radius(torch.tensor([float(h)], dtype=torch.float64), float(w), o, legacy=True)
    assert float(got_legacy) == pytest.approx(min(legacy), abs=1e-6)
    assert float(got_legacy) > float(got)  # the known bug: a radius about three times too large


def _iou(a: list[float], b: list[float]) -> float:
    return float(box_iou(torch.tensor([a], dtype=torch.float64), torch.tensor([b], dtype=torch.float64)))


@pytest.mark.parametrize("h, w", [(10, 10), (8, 32), (3, 5), (40, 20), (7.5, 100)])
@pytest.mark.parametrize("o", [0.3, 0.5, 0.7, 0.9])
def test_corrected_radius_keeps_min_overlap(h, w, o):
    """Each case's radius gives IoU exactly ``o``; the rule's radius (the smallest) keeps IoU >= ``o`` in all
    three displacements: shifted by r in x and y, shrunk by r per corner, grown by r per corner."""
    gt = [0.0, 0.0, w, h]
    r1, r2, r3 = corrected_radii(h, w, o)
    assert _iou(gt, [r1, r1, w + r1, h + r1]) == pytest.approx(o, abs=1e-9)
    assert _iou(gt, [r2, r2, w - r2, h - r2]) == pytest.approx(o, abs=1e-9)
    assert _iou(gt, [-r3, -r3, w + r3, h + r3]) == pytest.approx(o, abs=1e-9)
    r = float(gaussian_radius(torch.tensor(float(h), dtype=torch.float64), float(w), o))
    assert _iou(gt, [r, r, w + r, h + r]) >= o - 1e-9
    assert _iou(gt, [r, r, w - r, h - r]) >= o - 1e-9
    assert _iou(gt, [-r, -r, w + r, h + r]) >= o - 1e-9
    legacy = float(gaussian_radius(torch.tensor(float(h), dtype=torch.float64), float(w), o, legacy=True))
    assert _iou(gt, [legacy, legacy, w + legacy, h + legacy]) < o  # the original's radius breaks the rule


def test_radius_is_elementwise_and_validated():
    h = torch.tensor([[10.0, 8.0], [3.0, 40.0]])
    w = torch.tensor([[10.0, 32.0], [5.0, 20.0]])
    got = gaussian_radius(h, w, 0.7)
    assert got.shape == (2, 2)
    assert float(got[0, 1]) == pytest.approx(1.011118, abs=1e-5)
    with pytest.raises(ValueError, match="min_overlap"):
        gaussian_radius(h, w, 1.0)


# ------------------------------------------------------------------------------------------ reference loop
def draw_gaussian(heatmap: np.ndarray, centre: tuple[int, int], radius: int) -> None:
    """The original ``draw_umich_gaussian`` (CenterNet ``utils/image.py``)."""
    diameter = 2 * radius + 1
    sigma = diameter / 6
    m = n = (diameter - 1.0) / 2.0
    y, x = np.ogrid[-m : m + 1, -n : n + 1]
    gaussian = np.exp(-(x * x + y * y) / (2 * sigma * sigma))
    gaussian[gaussian < np.finfo(gaussian.dtype).eps * gaussian.max()] = 0
    x, y = int(centre[0]), int(centre[1])
    height, width = heatmap.shape[0:2]
    left, right = min(x, radius), min(width - x, radius + 1)
    top, bottom = min(y, radius), min(height - y, radius + 1)
    masked_heatmap = heatmap[y - top : y + bottom, x - left : x + right]
    masked_gaussian = gaussian[radius - top : radius + bottom, radius - left : radius + right]
    np.maximum(masked_heatmap, masked_gaussian, out=masked_heatmap)


def reference_targets(targets, feat_size, num_classes, stride, min_overlap, legacy):
    """Per image, per object, as the original ``ctdet`` dataset does (boxes already in pixels)."""
    h, w = feat_size
    heatmaps, per_image = [], []
    for t in targets:
        heat = np.zeros((num_classes, h, w), dtype=np.float32)
        rows = []
        for box, label in zip(t["boxes"].tolist(), t["labels"].tolist()):
            x1, y1, x2, y2 = (v / stride for v in box)
            bw, bh = x2 - x1, y2 - y1
            r = (corrected_radii if not legacy else legacy_radii)(math.ceil(bh), math.ceil(bw), min_overlap)
            radius = max(0, int(min(r)))
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            col, row = min(int(cx), w - 1), min(int(cy), h - 1)
            draw_gaussian(heat[label], (col, row), radius)
            rows.append((row * w + col, cx - col, cy - row, bw, bh))
        heatmaps.append(heat)
        per_image.append(rows)
    return np.stack(heatmaps), per_image


def _targets():
    g = torch.Generator().manual_seed(0)
    out = []
    for n in (5, 0, 9, 2):
        xy = torch.rand(n, 2, generator=g) * torch.tensor([90.0, 60.0])
        wh = torch.rand(n, 2, generator=g) * 40 + 2
        boxes = torch.cat([xy, torch.minimum(xy + wh, torch.tensor([96.0, 64.0]))], 1)
        out.append({"boxes": boxes, "labels": torch.randint(0, 3, (n,), generator=g)})
    # two objects of one class sharing a centre cell, and a box on the border
    out[3]["boxes"] = torch.tensor([[10.0, 10.0, 30.0, 30.0], [12.0, 12.0, 28.0, 28.0]])
    out[3]["labels"] = torch.tensor([1, 1])
    out[0]["boxes"][0] = torch.tensor([0.0, 40.0, 96.0, 64.0])
    return out


@pytest.mark.parametrize("legacy", [False, True])
def test_batched_targets_match_the_per_object_loop(legacy):
    targets = _targets()
    feat_size, stride, num_classes = (16, 24), 4, 3
    builder = CenterNetTargetBuilder(stride, min_overlap=0.7, legacy_radius=legacy)
    gt_boxes, gt_labels, gt_mask = pad_targets(targets)
    got = builder(feat_size, gt_boxes, gt_labels, gt_mask, num_classes)
    ref_heat, ref_rows = reference_targets(targets, feat_size, num_classes, stride, 0.7, legacy)
    assert got.heatmap.shape == (4, num_classes, *feat_size)
    np.testing.assert_allclose(got.heatmap.numpy(), ref_heat, atol=1e-6)
    assert got.mask.tolist() == gt_mask.tolist()
    for b, rows in enumerate(ref_rows):
        for g, (index, dx, dy, bw, bh) in enumerate(rows):
            assert int(got.index[b, g]) == index
            np.testing.assert_allclose(got.offset_size[b, g].numpy(), [dx, dy, bw, bh], atol=1e-5)
    assert (got.offset_size[~gt_mask] == 0).all() and (got.index[~gt_mask] == 0).all()
    # every object's centre cell is a peak of exactly 1 in its class
    for b, rows in enumerate(ref_rows):
        for g, row in enumerate(rows):
            label = int(targets[b]["labels"][g])
            assert float(got.heatmap[b, label].flatten()[row[0]]) == 1.0


def test_legacy_radius_spreads_wider():
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 88.0, 56.0]]), "labels": torch.tensor([0])}]
    padded = pad_targets(targets)
    new = CenterNetTargetBuilder(4)((16, 24), *padded, 1).heatmap
    old = CenterNetTargetBuilder(4, legacy_radius=True)((16, 24), *padded, 1).heatmap
    assert int((old > 0).sum()) > int((new > 0).sum()) > 1


def test_empty_batch():
    targets = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}] * 2
    got = CenterNetTargetBuilder(4)((8, 8), *pad_targets(targets), 5)
    assert got.heatmap.shape == (2, 5, 8, 8) and not got.heatmap.any()
    assert got.index.shape == (2, 0) and got.offset_size.shape == (2, 0, 4)
