"""VOC AP: the seed example, hand-computed 11-point and all-point cases, and a brute-force reference."""

from __future__ import annotations

import numpy as np
import pytest

from detforge.metrics import DetectionResult, GroundTruth, compute_ap, compute_coco_map, compute_map


def brute_force_ap(tp: list[int], num_pos: int, method: str) -> float:
    """VOC devkit formulas written the slow, obvious way on a list of hit/miss flags in score order."""
    tp_cum = np.cumsum(tp)
    fp_cum = np.cumsum([1 - t for t in tp])
    rec = tp_cum / num_pos
    prec = tp_cum / (tp_cum + fp_cum)
    if method == "11_point":
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            ap += (prec[rec >= t].max() if (rec >= t).any() else 0.0) / 11
        return ap
    mrec = [0.0, *rec, 1.0]
    mpre = [0.0, *prec, 0.0]
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    return sum((mrec[i + 1] - mrec[i]) * mpre[i + 1] for i in range(len(mrec) - 1) if mrec[i + 1] != mrec[i])


def test_seed_example_two_detections_one_gt() -> None:
    dets = [DetectionResult([10, 10, 50, 50], 0.9, 0), DetectionResult([30, 30, 80, 80], 0.8, 0)]
    gts = [GroundTruth([12, 12, 48, 48], 0)]  # IoU with the first detection: 36^2 / 40^2 = 0.81
    assert compute_ap(dets, gts, iou_threshold=0.5) == pytest.approx(1.0)
    assert compute_ap(dets, gts, iou_threshold=0.85) == 0.0


def _row(i: int, hit: bool, score: float) -> tuple[DetectionResult, GroundTruth]:
    x = 100.0 * i
    box = [x, 0.0, x + 10, 10.0]
    det_box = box if hit else [x + 50, 50.0, x + 60, 60.0]
    return DetectionResult(det_box, score, 0), GroundTruth(box, 0)


def test_eleven_point_by_hand() -> None:
    # 3 objects; detections by score: hit, miss, hit -> precision 1, 1/2, 2/3 at recall 1/3, 1/3, 2/3.
    # 11-point: recall 0..0.3 -> 1 (4 points), 0.4..0.6 -> 2/3 (3 points), 0.7..1 -> 0 (4 points).
    rows = [_row(0, True, 0.9), _row(1, False, 0.8), _row(2, True, 0.7)]
    dets = [r[0] for r in rows]
    gts = [r[1] for r in rows]
    assert compute_ap(dets, gts) == pytest.approx((4 * 1.0 + 3 * 2 / 3) / 11)
    # all points: recall 0->1/3 at precision 1, 1/3->2/3 at 2/3.
    assert compute_ap(dets, gts, method="all_points") == pytest.approx(1 / 3 + 1 / 3 * 2 / 3)


def test_duplicate_detection_is_false_positive_and_difficult_is_neither() -> None:
    gt = GroundTruth([0, 0, 10, 10], 0)
    dup = [DetectionResult([0, 0, 10, 10], 0.9, 0), DetectionResult([0, 0, 10, 10], 0.8, 0)]
    assert compute_ap(dup, [gt], method="all_points") == pytest.approx(1.0)  # recall 1 at precision 1
    hard = GroundTruth([20, 20, 30, 30], 0, difficult=True)
    dets = [DetectionResult([20, 20, 30, 30], 0.95, 0), DetectionResult([0, 0, 10, 10], 0.5, 0)]
    assert compute_ap(dets, [gt, hard], method="all_points") == pytest.approx(1.0)
    assert compute_ap(dets, [hard]) == 0.0  # nothing to find


def test_zero_boxes_and_border_box() -> None:
    assert compute_ap([], [GroundTruth([0, 0, 5, 5], 0)]) == 0.0
    assert compute_ap([DetectionResult([0, 0, 5, 5], 0.5, 0)], []) == 0.0
    border = GroundTruth([0, 0, 640, 480], 0)
    assert compute_ap([DetectionResult([0, 0, 640, 480], 0.5, 0)], [border]) == pytest.approx(1.0)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("method", ["11_point", "all_points"])
def test_random_against_brute_force(seed: int, method: str) -> None:
    rng = np.random.default_rng(seed)
    hits = rng.random(30) < 0.5
    rows = [_row(i, bool(h), float(s)) for i, (h, s) in enumerate(zip(hits, -np.sort(-rng.random(30))))]
    extra_gts = [
        GroundTruth([5000.0 + 20 * i, 0, 5010.0 + 20 * i, 10], 0) for i in range(int(rng.integers(0, 5)))
    ]
    gts = [r[1] for r in rows] + extra_gts
    expected = brute_force_ap(hits.astype(int).tolist(), len(gts), method) if hits.any() else 0.0
    assert compute_ap([r[0] for r in rows], gts, method=method) == pytest.approx(expected, abs=1e-12)


def test_map_matches_within_image_and_class_only() -> None:
    # Image 0: class 0 found; image 1: a class-1 detection on a class-0 object is a miss.
    dets = [[DetectionResult([0, 0, 10, 10], 0.9, 0)], [DetectionResult([0, 0, 10, 10], 0.9, 1)]]
    gts = [
        [GroundTruth([0, 0, 10, 10], 0)],
        [GroundTruth([0, 0, 10, 10], 0), GroundTruth([50, 50, 60, 60], 1)],
    ]
    # class 0: one of two objects found at precision 1 -> 11-point AP 6/11; class 1: miss -> 0.
    assert compute_map(dets, gts, num_classes=3) == pytest.approx((6 / 11 + 0.0) / 2)
    # The same detection moved to image 1's own list must not match image 0's object.
    flat_dets = [DetectionResult([0, 0, 10, 10], 0.9, 0, image_id=1)]
    flat_gts = [GroundTruth([0, 0, 10, 10], 0, image_id=0)]
    assert compute_map(flat_dets, flat_gts, num_classes=1) == 0.0


def test_coco_map_averages_thresholds() -> None:
    dets = [DetectionResult([0, 0, 10, 10], 0.9, 0)]
    gts = [GroundTruth([0, 0, 10, 12], 0)]  # IoU 100/120 = 0.833: hit at 0.50..0.80 (7 of 10 thresholds)
    assert compute_coco_map([dets], [gts], num_classes=1) == pytest.approx(0.7)


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match="method must be one of"):
        compute_ap([], [], method="voc")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="class_id 5"):
        compute_map([[DetectionResult([0, 0, 1, 1], 0.5, 5)]], [[]], num_classes=2)
    with pytest.raises(ValueError, match="GroundTruth #0"):
        compute_ap([DetectionResult([0, 0, 1, 1], 0.5, 0)], [GroundTruth([5, 5, 1, 1], 0)])
