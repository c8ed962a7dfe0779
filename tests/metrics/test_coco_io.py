"""COCO results writer, the printed table, tensor inputs and bad-input errors."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detforge.metrics import (
    CocoDetections,
    COCOEvaluator,
    CocoGroundTruth,
    coco_results,
    evaluate_coco_files,
    format_coco_table,
    write_coco_results,
)

GT = {
    "images": [{"id": 10}, {"id": 20}, {"id": 30}],
    "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}, {"id": 44, "name": "bottle"}],
    "annotations": [
        {"id": 1, "image_id": 10, "category_id": 1, "bbox": [10, 10, 30, 60], "area": 1500, "iscrowd": 0},
        {"id": 2, "image_id": 10, "category_id": 18, "bbox": [50, 50, 120, 90], "area": 9000, "iscrowd": 0},
        {"id": 3, "image_id": 20, "category_id": 1, "bbox": [0, 0, 200, 200], "area": 30000, "iscrowd": 1},
        {"id": 4, "image_id": 20, "category_id": 1, "bbox": [5, 5, 8, 8], "area": 64, "iscrowd": 0},
    ],
}


def test_written_results_evaluate_like_pycocotools(tmp_path) -> None:
    label_to_cat = [1, 18, 44]  # labels 0, 1, 2 -> the data set's ids
    preds = [
        {
            "boxes": torch.tensor([[10.0, 10, 40, 70], [50, 50, 170, 140]]),
            "scores": torch.tensor([0.9, 0.6]),
            "labels": torch.tensor([0, 1]),
        },
        {
            "boxes": torch.tensor([[6.0, 5, 13, 13], [20, 20, 90, 90]]),
            "scores": torch.tensor([0.7, 0.5]),
            "labels": torch.tensor([0, 0]),
        },
        {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)},
    ]
    path = write_coco_results(preds, [10, 20, 30], label_to_cat, tmp_path / "out" / "results.json")
    records = json.loads(path.read_text())
    assert records[1] == {
        "image_id": 10,
        "category_id": 18,
        "bbox": [50.0, 50.0, 120.0, 90.0],
        "score": pytest.approx(0.6),
    }
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        coco_gt = COCO()
        coco_gt.dataset = json.loads(json.dumps(GT))
        coco_gt.createIndex()
        ev = COCOeval(coco_gt, coco_gt.loadRes(str(path)), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    ours = evaluate_coco_files(GT, path)
    np.testing.assert_allclose(ours.stats, ev.stats, atol=1e-12, rtol=0)
    # The printed table is pycocotools' own text, line for line.
    expected_lines = [ln for ln in printed.getvalue().splitlines() if ln.startswith(" Average")]
    assert format_coco_table(ours.stats).splitlines() == expected_lines
    table = ours.table()
    assert "person" in table and "dog" in table and "bottle" in table
    assert ours.per_class_ap[44] == -1.0  # no ground truth: undefined, printed as "-"
    with pytest.raises(ValueError, match="label 7 has no category id"):
        coco_results(
            [{"boxes": torch.zeros(1, 4), "scores": torch.ones(1), "labels": torch.tensor([7])}],
            [10],
            label_to_cat,
        )


def test_tensor_inputs_equal_json_inputs() -> None:
    gt = CocoGroundTruth.from_coco_dict(GT)
    targets = []
    for img in (10, 20, 30):
        anns = [a for a in GT["annotations"] if a["image_id"] == img]
        xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float64).reshape(-1, 4)
        targets.append(
            {
                "boxes": torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1),
                "labels": torch.tensor([a["category_id"] for a in anns], dtype=torch.long),
                "iscrowd": torch.tensor([a["iscrowd"] for a in anns], dtype=torch.bool),
                "area": torch.tensor([a["area"] for a in anns], dtype=torch.float64),
            }
        )
    gt_t = CocoGroundTruth.from_tensors(targets, image_ids=[10, 20, 30], category_ids=[1, 18, 44])
    preds = [
        {"boxes": t["boxes"] + 1, "scores": torch.linspace(1, 0.5, len(t["boxes"])), "labels": t["labels"]}
        for t in targets
    ]
    dt_t = CocoDetections.from_tensors(preds, image_ids=[10, 20, 30])
    dt_j = CocoDetections.from_coco_results(coco_results(preds, [10, 20, 30]))
    a = COCOEvaluator().evaluate(gt, dt_j)
    b = COCOEvaluator().evaluate(gt_t, dt_t)
    np.testing.assert_array_equal(a.precision, b.precision)
    np.testing.assert_array_equal(a.stats, b.stats)


def test_bad_files_are_named(tmp_path) -> None:
    broken = tmp_path / "gt.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match="gt.json: not valid JSON"):
        evaluate_coco_files(broken, [])
    bad_box = json.loads(json.dumps(GT))
    bad_box["annotations"][2]["bbox"] = [0, 0, 5]
    with pytest.raises(ValueError, match=r"annotations\[2\].*'bbox' must be \[x, y, w, h\]"):
        evaluate_coco_files(bad_box, [])
    with pytest.raises(ValueError, match=r"detection \[1\].*non-finite score"):
        evaluate_coco_files(
            GT,
            [
                {"image_id": 10, "category_id": 1, "bbox": [0, 0, 1, 1], "score": s}
                for s in (0.5, float("nan"))
            ],
        )
    with pytest.raises(ValueError, match="missing or not a list"):
        evaluate_coco_files({"images": []}, [])


def test_unlisted_ids_are_left_out_with_a_counted_warning() -> None:
    results = [
        {"image_id": 10, "category_id": 1, "bbox": [10, 10, 30, 60], "score": 0.9},
        {"image_id": 10, "category_id": 99, "bbox": [10, 10, 30, 60], "score": 0.8},
        {"image_id": 20, "category_id": 99, "bbox": [10, 10, 30, 60], "score": 0.8},
    ]
    with pytest.warns(UserWarning, match=r"2 detection\(s\) have a category_id not listed .*category_id 99"):
        with_extra = evaluate_coco_files(GT, results)
    np.testing.assert_array_equal(with_extra.stats, evaluate_coco_files(GT, results[:1]).stats)
