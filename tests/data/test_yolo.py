"""YoloDataset: normalized cxcywh labels, empty and missing label files, bad lines."""

from __future__ import annotations

import warnings

import pytest
import torch

from detforge.boxes import cxcywh_norm_to_xyxy
from detforge.data.yolo import YoloDataset, image_to_label_path


def _quiet(data_yaml, **kwargs) -> YoloDataset:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return YoloDataset(data_yaml, **kwargs)


def test_boxes_match_reference_conversion(make_yolo):
    ds = _quiet(make_yolo())
    assert len(ds) == 4 and ds.class_names == ["cat", "dog"]
    _, target = ds[0]  # a.jpg, 40 x 60
    expected = cxcywh_norm_to_xyxy(torch.tensor([[0.5, 0.5, 0.5, 0.5], [0.25, 0.25, 0.1, 0.2]]), 40, 60)
    torch.testing.assert_close(target["boxes"], expected)
    assert target["labels"].tolist() == [0, 1]
    torch.testing.assert_close(ds[1][1]["boxes"], torch.tensor([[0.0, 0.0, 60.0, 40.0]]))  # border box
    assert ds[2][1]["boxes"].shape == (0, 4)  # empty label file
    assert ds[3][1]["boxes"].shape == (0, 4)  # no label file


def test_val_split_and_names_mapping(make_yolo):
    ds = _quiet(make_yolo(names={0: "cat", 1: "dog"}), split="val")
    assert all("/val/" in ds.image_path(i) for i in range(len(ds))) and ds.class_names == ["cat", "dog"]


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        ("5 0.5 0.5 0.2 0.2", "label_out_of_range"),
        ("0 0.5 0.5", "bad_record"),
        ("cat 0.5 0.5 0.2 0.2", "bad_record"),
        ("0 0.5 0.5 0 0.2", "degenerate_box"),
        ("0 nan 0.5 0.2 0.2", "nan_box"),
        ("0 3.5 3.5 0.2 0.2", "outside_box"),
    ],
)
def test_bad_line_skipped_and_named(make_yolo, line, kind):
    data_yaml = make_yolo(labels={"a": f"0 0.5 0.5 0.5 0.5\n{line}\n"})
    with pytest.warns(UserWarning, match=rf"(?s){kind}.*a\.txt:2"):
        ds = YoloDataset(data_yaml)
    assert ds.skipped == {kind: 1} and ds[0][1]["boxes"].shape == (1, 4)


def test_polygon_line_becomes_its_box(make_yolo):
    ds = _quiet(make_yolo(labels={"a": "1 0.1 0.2 0.5 0.2 0.5 0.6\n"}))
    torch.testing.assert_close(ds[0][1]["boxes"], torch.tensor([[6.0, 8.0, 30.0, 24.0]]))


def test_yaml_without_path_is_relative_to_its_folder(make_yolo, monkeypatch):
    data_yaml = make_yolo()
    data_yaml.write_text("train: images/train\nval: images/val\nnames: [cat, dog]\n")
    monkeypatch.chdir(data_yaml.parent.parent)
    assert len(_quiet(data_yaml.relative_to(data_yaml.parent.parent))) == 4


def test_image_to_label_path():
    assert image_to_label_path("/d/images/train/x.jpg") == "/d/labels/train/x.txt"


def test_missing_split_entry(make_yolo):
    with pytest.raises(ValueError, match="'test'"):
        YoloDataset(make_yolo(), split="test")


def test_round_trip_property(tmp_path_factory):
    from hypothesis import given, settings
    from hypothesis import strategies as st
    from PIL import Image

    root = tmp_path_factory.mktemp("yolo_prop")
    (root / "images").mkdir()
    (root / "labels").mkdir()
    Image.new("RGB", (50, 40)).save(root / "images" / "a.png")
    (root / "data.yaml").write_text("train: images\nval: images\nnames: [a, b, c]\n")
    row = st.tuples(
        st.integers(0, 2),
        st.floats(0.2, 0.8),
        st.floats(0.2, 0.8),
        st.floats(0.05, 0.4),
        st.floats(0.05, 0.4),
    )

    @settings(max_examples=25, deadline=None)
    @given(st.lists(row, max_size=6))
    def check(rows):
        (root / "labels" / "a.txt").write_text(
            "".join(f"{c} {x!r} {y!r} {w!r} {h!r}\n" for c, x, y, w, h in rows)
        )
        _, target = _quiet(root / "data.yaml")[0]
        expected = cxcywh_norm_to_xyxy(
            torch.tensor([r[1:] for r in rows], dtype=torch.float64).reshape(-1, 4), 40, 50
        )
        torch.testing.assert_close(target["boxes"], expected.float())
        assert target["labels"].tolist() == [r[0] for r in rows]

    check()
