"""The dataset doctor on clean and broken datasets, synthetic samples and a COCO export of them."""

from __future__ import annotations

import json

import pytest
import torch

from detforge.data.doctor import examine, run_doctor


class _Samples(torch.utils.data.Dataset):
    """In-memory samples with hand-made targets (stands in for any non-file dataset)."""

    class_names = ["a", "b"]

    def __init__(self, targets):
        self.targets = targets

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        image = torch.full((3, 40, 50), i / 10.0)
        return image, self.targets[i]


def _t(boxes, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "labels": torch.tensor(labels)}


def test_clean_coco_counts(make_coco, tmp_path):
    image_dir, ann_file = make_coco()
    report = run_doctor(f"coco:{ann_file}:{image_dir}", out_dir=tmp_path / "out")
    assert report.errors == 0 and "verdict: OK" in report.to_text()
    assert report.num_images == report.images_checked == 3 and report.num_boxes == 3
    assert report.empty_images == 1 and report.crowd_or_ignored == 1
    assert report.per_class == [1, 2] and report.category_ids == [3, 7]
    assert report.size_buckets == {"small": 2, "medium": 1, "large": 0}  # areas 150, 1000, 1500
    assert (tmp_path / "out" / "doctor_grid.png").is_file()
    assert "id gaps [4, 5, 6]" in report.to_text()


def test_broken_coco_reports_skipped_and_unreadable(make_coco, tmp_path):
    def mutate(d):
        d["annotations"][0]["bbox"] = [1, 1, -3, 4]
        d["annotations"][2]["category_id"] = 42

    image_dir, ann_file = make_coco(mutate=mutate)
    (image_dir / "img2.png").write_bytes(b"not an image")
    report = run_doctor(f"coco:{ann_file}:{image_dir}", out_dir=tmp_path)
    text = report.to_text()
    assert report.issues.counts == {"degenerate_box": 1, "unknown_category": 1, "unreadable_image": 1}
    assert report.errors == 3 and "annotations[0]" in text and "annotations[2]" in text and "img2.png" in text


def test_duplicates_and_size_mismatch(make_coco, tmp_path):
    def mutate(d):
        d["images"][2]["file_name"] = "img0.png"  # same file twice, and it is not 32 x 32
        d["images"][1]["height"] = 99

    image_dir, ann_file = make_coco(mutate=mutate)
    report = run_doctor(f"coco:{ann_file}:{image_dir}", out_dir=tmp_path, grid_images=0)
    assert report.issues.counts["duplicate_image"] == 1 and report.issues.counts["size_mismatch"] == 2
    assert report.grid_path is None


def test_unparsable_spec_is_fatal_not_a_traceback(make_coco, tmp_path):
    image_dir, ann_file = make_coco(text='{"images": [')
    report = run_doctor(f"coco:{ann_file}:{image_dir}", out_dir=tmp_path)
    assert report.errors == 1 and "not valid JSON" in report.to_text()


def test_samples_path_finds_every_box_problem():
    ds = _Samples(
        [
            _t([[1, 1, 10, 10]], [0]),
            _t([[5, 5, 5, 9], [float("nan"), 0, 1, 1], [60, 0, 70, 9], [-2, 0, 10, 10]], [1, 1, 0, 0]),
            _t([[1, 1, 4, 4]], [7]),
            _t([], []),
            _t([[1, 1, 10, 10]], [0]),
        ]
    )
    report = examine(ds, max_images=0)
    assert report.issues.counts == {
        "degenerate_box": 1,
        "nan_box": 1,
        "outside_box": 1,
        "clipped_box": 1,
        "label_out_of_range": 1,
    }
    assert report.num_boxes == 3 and report.per_class == [3, 0] and report.empty_images == 2
    assert report.classes_without_boxes == ["b"]
    assert "sample 1 (image_id 1) box 0" in report.issues.examples["degenerate_box"]


def test_samples_path_flags_normalized_coordinates_and_duplicates():
    ds = _Samples([_t([[0.1, 0.1, 0.5, 0.5]], [0]), _t([[0.2, 0.2, 0.4, 0.9]], [1])])
    report = examine(ds, max_images=0)
    assert report.issues.counts["normalized_coords"] == 1 and report.errors >= 1


def test_empty_dataset_is_an_error():
    report = examine(_Samples([]))
    assert report.errors == 1 and "no images" in report.to_text()


def _by_name(report):
    """Per-class box counts by class name (VOC collects names in sorted order), classes with boxes only."""
    return {n: c for n, c in zip(report.class_names, report.per_class) if c}


def test_synthetic_and_its_exports_agree(tmp_path):
    synthetic = pytest.importorskip("detforge.data.synthetic")
    writers = pytest.importorskip("detforge.data.writers")
    ds = synthetic.SyntheticShapes(num_images=6, image_size=64, seed=3)
    direct = examine(ds, max_images=0)
    ann_file = writers.write_coco(ds, tmp_path / "coco", split="train")
    writers.write_voc(ds, tmp_path / "voc", split="train")
    writers.write_yolo(ds, tmp_path / "yolo", split="train")
    specs = [f"coco:{ann_file}:{tmp_path / 'coco' / 'train'}", f"voc:{tmp_path / 'voc'}"]
    specs.append(f"yolo:{tmp_path / 'yolo' / 'data.yaml'}")
    assert direct.errors == 0 and direct.num_boxes > 0
    for spec in specs:
        exported = run_doctor(spec, out_dir=tmp_path, grid_images=0)
        assert exported.errors == 0, exported.to_text()
        got = (exported.num_images, exported.num_boxes, _by_name(exported), exported.empty_images)
        assert got == (6, direct.num_boxes, _by_name(direct), direct.empty_images), spec
    assert json.loads(ann_file.read_text())["categories"][0]["id"] == 1
