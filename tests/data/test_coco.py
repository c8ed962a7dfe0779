"""CocoDataset against the annotation file and pycocotools, plus every bad-input case."""

from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

from detforge.data.coco import CocoDataset


def _quiet(image_dir, ann_file, **kwargs) -> CocoDataset:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean file must not warn
        return CocoDataset(image_dir, ann_file, **kwargs)


def test_matches_pycocotools(make_coco):
    image_dir, ann_file = make_coco()
    ds = _quiet(image_dir, ann_file)
    coco = COCO(str(ann_file))
    assert len(ds) == len(coco.getImgIds()) == 3
    assert ds.label_to_cat_id == [3, 7] and ds.cat_id_to_label == {3: 0, 7: 1}
    assert ds.class_names == ["cat", "dog"] and ds.num_classes == 2
    for i in range(len(ds)):
        image, target = ds[i]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=target["image_id"]))
        expected = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        expected[:, 2:] += expected[:, :2]
        torch.testing.assert_close(target["boxes"], expected)
        assert target["labels"].tolist() == [ds.cat_id_to_label[a["category_id"]] for a in anns]
        assert target["iscrowd"].tolist() == [bool(a["iscrowd"]) for a in anns]
        assert target["area"].tolist() == [a["area"] for a in anns]
        info = coco.loadImgs(target["image_id"])[0]
        assert image.shape == (3, info["height"], info["width"]) and image.dtype == torch.float32
        assert target["orig_size"].tolist() == target["size"].tolist() == [info["height"], info["width"]]
        assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
    # the image without annotations is a valid empty sample
    assert ds[2][1]["boxes"].shape == (0, 4) and ds[2][1]["labels"].shape == (0,)
    assert ds.skipped == {}


def test_imgsz_scales_boxes_and_image(make_coco):
    image_dir, ann_file = make_coco()
    ds = _quiet(image_dir, ann_file, imgsz=(20, 30))
    image, target = ds[0]  # file is 40 x 60
    assert image.shape == (3, 20, 30)
    torch.testing.assert_close(target["boxes"][0], torch.tensor([2.5, 3.0, 12.5, 8.0]))
    assert target["orig_size"].tolist() == [40, 60] and target["size"].tolist() == [20, 30]
    torch.testing.assert_close(target["area"][0], torch.tensor(150.0 / 4))


def test_transforms_get_uint8_image_and_target(make_coco):
    image_dir, ann_file = make_coco()
    seen = {}

    def transforms(image, target):
        seen["dtype"] = image.dtype
        return image.float() / 255, {**target, "touched": True}

    _, target = _quiet(image_dir, ann_file, transforms=transforms)[0]
    assert seen["dtype"] == torch.uint8 and target["touched"]


def test_seed_get_api(make_coco):
    image_dir, ann_file = make_coco()
    image, anns = _quiet(image_dir, ann_file).get(1)  # 50 x 30 image, box [0, 0, 30, 50]
    assert image.shape == (3, 50, 30)
    assert len(anns) == 1 and anns[0].category_id == 1
    assert anns[0].bbox == pytest.approx((0.0, 0.0, 1.0, 1.0))


def test_mode_l_gives_one_channel(make_coco):
    image_dir, ann_file = make_coco()
    image, _ = _quiet(image_dir, ann_file, mode="L")[0]
    assert image.shape == (1, 40, 60)


# ---- bad input: whole-file errors name the file ----


def test_truncated_json_names_file(make_coco):
    image_dir, ann_file = make_coco(text=json.dumps({"images": []})[:-5])
    with pytest.raises(ValueError, match=r"instances\.json.*not valid JSON"):
        CocoDataset(image_dir, ann_file)


def test_missing_top_level_key(make_coco):
    image_dir, ann_file = make_coco(mutate=lambda d: d.pop("categories"))
    with pytest.raises(ValueError, match=r"instances\.json.*'categories'"):
        CocoDataset(image_dir, ann_file)


def test_image_entry_without_file_name(make_coco):
    image_dir, ann_file = make_coco(mutate=lambda d: d["images"][1].pop("file_name"))
    with pytest.raises(ValueError, match=r"images\[1\].*file_name"):
        CocoDataset(image_dir, ann_file)


def test_missing_annotation_file():
    with pytest.raises(FileNotFoundError, match="nope.json"):
        CocoDataset("x", "nope.json")


# ---- bad input: one bad record is skipped with one counted warning naming it ----


def _set_bbox(index, bbox):
    def mutate(d):
        d["annotations"][index]["bbox"] = bbox

    return mutate


@pytest.mark.parametrize(
    ("mutate", "kind", "record"),
    [
        (_set_bbox(0, [5, 6, 0, 10]), "degenerate_box", "annotations[0]"),
        (_set_bbox(0, [5, 6, 20, -1]), "degenerate_box", "annotations[0]"),
        (_set_bbox(0, [100, 6, 20, 10]), "outside_box", "annotations[0]"),
        (_set_bbox(2, [float("nan"), 0, 30, 50]), "nan_box", "annotations[2]"),
        (lambda d: d["annotations"][2].update(category_id=99), "unknown_category", "annotations[2]"),
        (lambda d: d["annotations"][2].pop("bbox"), "bad_record", "annotations[2]"),
        (lambda d: d["annotations"][2].update(image_id=555), "unknown_image", "annotations[2]"),
    ],
)
def test_bad_record_skipped_and_counted(make_coco, mutate, kind, record):
    image_dir, ann_file = make_coco(mutate=mutate)
    with pytest.warns(UserWarning, match=rf"(?s)1 x {kind}.*{re.escape(record)}"):
        ds = CocoDataset(image_dir, ann_file)
    assert ds.skipped == {kind: 1}
    assert sum(int(ds[i][1]["boxes"].shape[0]) for i in range(len(ds))) == 2  # exactly one of 3 dropped


def test_box_partly_outside_is_clipped_and_counted(make_coco):
    image_dir, ann_file = make_coco(mutate=_set_bbox(0, [-5, 30, 20, 20]))  # y2 = 50 > h = 40, x1 < 0
    with pytest.warns(UserWarning, match="clipped_box"):
        ds = CocoDataset(image_dir, ann_file)
    assert ds.issues.counts["clipped_box"] == 1 and ds.skipped == {}
    torch.testing.assert_close(ds[0][1]["boxes"][0], torch.tensor([0.0, 30.0, 15.0, 40.0]))


def test_image_missing_on_disk_is_skipped(make_coco):
    image_dir, ann_file = make_coco()
    (image_dir / "img1.png").unlink()
    with pytest.warns(UserWarning, match=r"missing_image.*images\[1\] \(img1\.png\)"):
        ds = CocoDataset(image_dir, ann_file)
    assert len(ds) == 2 and ds.skipped == {"missing_image": 1}


def test_corrupt_image_raises_naming_path(make_coco):
    image_dir, ann_file = make_coco()
    (image_dir / "img0.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    ds = _quiet(image_dir, ann_file)
    with pytest.raises(ValueError, match=r"img0\.png"):
        ds[0]


def test_normalized_coordinates_are_flagged(make_coco):
    def mutate(d):
        for a in d["annotations"]:
            a["bbox"] = [0.1, 0.1, 0.2, 0.3]

    image_dir, ann_file = make_coco(mutate=mutate)
    with pytest.warns(UserWarning, match="normalized_coords"):
        CocoDataset(image_dir, ann_file)


def test_many_bad_records_one_warning_with_count(make_coco):
    def mutate(d):
        d["annotations"] += [
            {"id": 100 + k, "image_id": 12, "category_id": 3, "bbox": [1, 1, 0, 0]} for k in range(9)
        ]

    image_dir, ann_file = make_coco(mutate=mutate)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = CocoDataset(image_dir, ann_file)
    assert len([w for w in caught if issubclass(w.category, UserWarning)]) == 1
    assert "9 x degenerate_box" in str(caught[0].message)
    assert ds.skipped == {"degenerate_box": 9} and len(ds.issues.examples["degenerate_box"]) == 5
    assert np.array_equal(ds[2][1]["boxes"].shape, (0, 4))


def test_non_positive_image_size_skips_that_image(make_coco):
    image_dir, ann_file = make_coco(mutate=lambda d: d["images"][2].update(width=0))
    with pytest.warns(UserWarning, match=r"bad_record.*images\[2\]"):
        ds = CocoDataset(image_dir, ann_file)
    assert len(ds) == 2


@pytest.fixture(scope="module")
def one_image_dir(tmp_path_factory):
    from PIL import Image

    d = tmp_path_factory.mktemp("prop")
    Image.new("RGB", (50, 40)).save(d / "a.png")
    return d


def _box_strategy():
    from hypothesis import strategies as st

    return st.lists(
        st.tuples(
            st.floats(1, 45), st.floats(1, 35), st.floats(0.5, 5), st.floats(0.5, 5), st.integers(0, 2)
        ),
        max_size=6,
    )


def test_round_trip_property(one_image_dir):
    from hypothesis import given, settings

    @settings(max_examples=25, deadline=None)
    @given(_box_strategy())
    def check(rows):
        data = {
            "images": [{"id": 1, "file_name": "a.png", "height": 40, "width": 50}],
            "annotations": [
                {"id": k, "image_id": 1, "category_id": c + 1, "bbox": [x, y, w, h]}
                for k, (x, y, w, h, c) in enumerate(rows)
            ],
            "categories": [{"id": k, "name": str(k)} for k in (1, 2, 3)],
        }
        ann = one_image_dir / "ann.json"
        ann.write_text(json.dumps(data))
        _, target = _quiet(one_image_dir, ann)[0]
        expected = torch.tensor([[x, y, x + w, y + h] for x, y, w, h, _ in rows], dtype=torch.float32)
        torch.testing.assert_close(target["boxes"], expected.reshape(-1, 4))
        assert target["labels"].tolist() == [c for *_, c in rows]

    check()
