"""COCOEvaluator against pycocotools on randomized data sets: every number must agree."""

from __future__ import annotations

import contextlib
import copy
import io

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detforge.metrics import CocoDetections, COCOEvaluator, CocoGroundTruth, evaluate_coco_files


def random_coco(seed: int, num_images: int = 6, num_cats: int = 4) -> tuple[dict, list]:
    """A small COCO data set and results with every hard case: crowds, empty images, categories without
    ground truth, score ties, duplicate boxes, IoU exactly at thresholds, all three area ranges, area fields
    that differ from the box area, detections past max_dets."""
    rng = np.random.default_rng(seed)
    images = [
        {"id": int(i), "width": 640, "height": 480} for i in rng.permutation(np.arange(1, num_images + 1) * 3)
    ]
    cat_ids = sorted(rng.choice(np.arange(1, 30), num_cats, replace=False).tolist())
    categories = [{"id": c, "name": f"c{c}"} for c in cat_ids]
    anns, results = [], []
    gt_cats = cat_ids[: max(1, num_cats - 1)]  # the last category never has ground truth
    for img in images:
        n_gt = int(rng.integers(0, 7)) if rng.random() > 0.15 else 0
        for _ in range(n_gt):
            size = rng.choice([6.0, 20.0, 45.0, 80.0, 150.0])
            w, h = size * rng.uniform(0.5, 1.5, 2)
            if rng.random() < 0.5:
                w, h = float(round(w)), float(round(h))
            x, y = float(round(rng.uniform(0, 400))), float(round(rng.uniform(0, 300)))
            area = w * h if rng.random() < 0.7 else w * h * rng.uniform(0.3, 1.3)
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": img["id"],
                    "category_id": int(rng.choice(gt_cats)),
                    "bbox": [x, y, float(w), float(h)],
                    "area": float(area),
                    "iscrowd": int(rng.random() < 0.15),
                }
            )
    for ann in anns:
        x, y, w, h = ann["bbox"]
        for _ in range(int(rng.integers(0, 4))):
            mode = rng.random()
            if mode < 0.2:
                box = [x, y, w, h]  # exact duplicate: IoU ties
            elif mode < 0.35:
                box = [x, y, w, h * 2]  # IoU exactly 0.5 (integers)
            elif mode < 0.45:
                box = [x, y, w, h * 4 / 3]  # IoU 0.75
            else:
                box = [
                    x + rng.normal(0, w * 0.15),
                    y + rng.normal(0, h * 0.15),
                    w * rng.uniform(0.7, 1.3),
                    h * rng.uniform(0.7, 1.3),
                ]
            cat = ann["category_id"] if rng.random() < 0.85 else int(rng.choice(cat_ids))
            results.append({"image_id": ann["image_id"], "category_id": cat, "bbox": [float(v) for v in box]})
    for img in images:
        for _ in range(int(rng.integers(0, 5))):
            w, h = rng.uniform(4, 200, 2)
            box = [float(rng.uniform(0, 400)), float(rng.uniform(0, 300)), float(w), float(h)]
            results.append({"image_id": img["id"], "category_id": int(rng.choice(cat_ids)), "bbox": box})
    for r in results:
        r["score"] = float(rng.choice([0.9, 0.5, 0.3])) if rng.random() < 0.4 else float(rng.random())
    order = rng.permutation(len(results))
    results = [results[i] for i in order]
    return {"images": images, "annotations": anns, "categories": categories}, results


def pycocotools_eval(gt: dict, results: list, **params) -> COCOeval:
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(results)) if results else COCO()
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        for key, value in params.items():
            setattr(ev.params, key, value)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def assert_same(ours, ref: COCOeval) -> None:
    np.testing.assert_allclose(ours.stats, ref.stats, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(ours.precision, ref.eval["precision"])
    np.testing.assert_array_equal(ours.recall, ref.eval["recall"])


@pytest.mark.parametrize("seed", range(150))
def test_random_parity(seed: int) -> None:
    gt, results = random_coco(seed, num_images=int(3 + seed % 6), num_cats=int(1 + seed % 5))
    ref = pycocotools_eval(gt, results)
    ours = evaluate_coco_files(gt, results)
    assert_same(ours, ref)
    np.testing.assert_array_equal(ours.scores, ref.eval["scores"])


@pytest.mark.parametrize("seed", range(6))
def test_random_parity_small_max_dets(seed: int) -> None:
    """Many detections per (image, category) and max_dets below that: truncation must match too."""
    gt, results = random_coco(100 + seed, num_images=3, num_cats=1)
    rng = np.random.default_rng(seed)
    extra = [
        {**r, "bbox": [v + float(rng.normal(0, 2)) for v in r["bbox"]], "score": float(rng.random())}
        for r in results
        for _ in range(3)
    ]
    results = results + extra
    ref = pycocotools_eval(gt, results, maxDets=[1, 2, 5])
    ours = COCOEvaluator(max_detections=(1, 2, 5)).evaluate(
        CocoGroundTruth.from_coco_dict(gt), CocoDetections.from_coco_results(results)
    )
    np.testing.assert_array_equal(ours.precision, ref.eval["precision"])
    np.testing.assert_array_equal(ours.recall, ref.eval["recall"])


def test_gt_with_id_zero_matches_pycocotools() -> None:
    """pycocotools reads a match to annotation id 0 as no match; we agree rather than differ silently."""
    gt, results = random_coco(7)
    for i, ann in enumerate(gt["annotations"]):
        ann["id"] = i
    assert_same(evaluate_coco_files(gt, results), pycocotools_eval(gt, results))


def test_no_detections_and_no_ground_truth() -> None:
    gt, results = random_coco(3)
    ours = evaluate_coco_files(gt, [])
    assert (ours.stats[ours.stats > -1] == 0).all()
    gt_empty = {**gt, "annotations": []}
    ours = evaluate_coco_files(gt_empty, results)
    assert (ours.stats == -1).all()
    assert all(v == -1 for v in ours.per_class_ap.values())


def test_equal_iou_tie_takes_the_later_ground_truth() -> None:
    """Two ground truths at the same IoU: pycocotools takes the later one, which decides the next match."""
    gt = {
        "images": [{"id": 1}],
        "categories": [{"id": 1, "name": "a"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [2, 0, 10, 10], "area": 100, "iscrowd": 0},
        ],
    }
    results = [
        {"image_id": 1, "category_id": 1, "bbox": [1, 0, 10, 10], "score": 0.9},  # IoU 0.818 with both
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.8},  # 1.0 with the first
    ]
    ours = evaluate_coco_files(gt, results)
    assert_same(ours, pycocotools_eval(gt, results))
    # IoU <= 0.8: both matched (AP 1); 0.85..0.95: only the second (precision 0.5 up to recall 0.5).
    assert ours.stats[0] == pytest.approx((7 * 1.0 + 3 * 51 * 0.5 / 101) / 10)


@pytest.mark.parametrize("seed", range(3))
def test_random_parity_custom_thresholds(seed: int) -> None:
    gt, results = random_coco(200 + seed, num_images=5, num_cats=3)
    iou_thrs = np.array([0.3, 0.5, 0.75])
    rec_thrs = np.linspace(0.0, 1.0, 11)
    ref = pycocotools_eval(gt, results, iouThrs=iou_thrs, recThrs=rec_thrs)
    ours = COCOEvaluator(iou_thresholds=iou_thrs, recall_thresholds=rec_thrs).evaluate(
        CocoGroundTruth.from_coco_dict(gt), CocoDetections.from_coco_results(results)
    )
    assert_same(ours, ref)


def test_parity_crowded_groups() -> None:
    """Dozens of detections per (image, category), many matching rounds, crowds taking several matches."""
    gt, results = random_coco(999, num_images=12, num_cats=2)
    rng = np.random.default_rng(5)
    results = results + [
        {**r, "bbox": [v + float(rng.normal(0, 3)) for v in r["bbox"]], "score": float(rng.random())}
        for r in results
        for _ in range(8)
    ]
    assert_same(evaluate_coco_files(gt, results), pycocotools_eval(gt, results))
