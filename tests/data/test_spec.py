"""build_dataset: every spec form, the split rules, and errors that list the accepted forms."""

from __future__ import annotations

import pytest

from detforge.data.coco import CocoDataset
from detforge.data.masks import MaskDataset
from detforge.data.spec import build_dataset, parse_spec
from detforge.data.synthetic import SyntheticShapes
from detforge.data.voc import VOCDataset
from detforge.data.widerface import WiderFaceDataset
from detforge.data.yolo import YoloDataset


def test_file_specs(make_coco, make_voc, make_yolo, make_wider, make_masks):
    image_dir, ann_file = make_coco()
    coco = build_dataset(f"coco:{ann_file}:{image_dir}", split="val", imgsz=(16, 16))
    assert isinstance(coco, CocoDataset) and len(coco) == 3 and coco[0][0].shape == (3, 16, 16)
    voc_root = make_voc()
    assert isinstance(build_dataset(f"voc:{voc_root}"), VOCDataset)
    assert len(build_dataset(f"voc:{voc_root}", split="val")) == 1
    yolo = build_dataset(f"yolo:{make_yolo()}", split="val")
    assert isinstance(yolo, YoloDataset) and "/val/" in yolo.image_path(0)
    wider_root = make_wider(split="val")
    wider = build_dataset(f"widerface:{wider_root}:val", split="train")  # the spec's split wins
    assert isinstance(wider, WiderFaceDataset) and wider.split == "val"
    assert isinstance(build_dataset(f"masks:{make_masks()}", mode="L"), MaskDataset)


def test_synthetic_sizes_and_seeds():
    pytest.importorskip("detforge.data.synthetic")
    train = build_dataset("synthetic:40", image_size=32)
    val = build_dataset("synthetic:40", split="val", image_size=32)
    assert (len(train), train.seed, len(val), val.seed) == (40, 0, 32, 1)
    assert len(build_dataset("synthetic")) == 512 and len(build_dataset("synthetic:400", split="val")) == 100
    assert build_dataset("synthetic-thermal:8").mode == "thermal"
    assert build_dataset("synthetic-sequence:8").mode == "sequence"


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "coco:only.json",
        "voc",
        "voc:a:b",
        "widerface:root:test",
        "synthetic:x",
        "synthetic:0",
        "imagenet:x",
    ],
)
def test_bad_specs_list_accepted_forms(spec):
    with pytest.raises(ValueError, match=r"accepted forms: synthetic\[:N\].*masks:DIR"):
        build_dataset(spec)


def test_windows_drive_letters_are_not_separators():
    assert parse_spec(r"coco:C:\data\ann.json:D:\data\images") == (
        "coco",
        [r"C:\data\ann.json", r"D:\data\images"],
    )


def test_bad_split():
    with pytest.raises(ValueError, match="'train', 'val'"):
        build_dataset("synthetic", split="test")


def test_mode_l_on_synthetic_renders_thermal():
    pytest.importorskip("detforge.data.synthetic")
    ds = build_dataset("synthetic:2", mode="L", image_size=32)
    assert ds.mode == "thermal" and ds[0][0].shape[0] == 1


def test_target_size_still_accepted_with_a_deprecation_warning(make_coco):
    image_dir, ann_file = make_coco()
    with pytest.warns(DeprecationWarning, match="build_dataset.*'target_size'.*'imgsz'"):
        coco = build_dataset(f"coco:{ann_file}:{image_dir}", split="val", target_size=(16, 16))
    assert coco.imgsz == (16, 16) and coco[0][0].shape == (3, 16, 16)
    with pytest.warns(DeprecationWarning, match="CocoDataset.*'imgsz'"):
        assert CocoDataset(image_dir, ann_file, target_size=(8, 8)).imgsz == (8, 8)
    with pytest.warns(DeprecationWarning, match="build_dataset.*'imgsz'"):
        synthetic = build_dataset("synthetic:4", target_size=32)
    assert synthetic.imgsz == (32, 32) and synthetic[0][0].shape == (3, 32, 32)
    with pytest.warns(DeprecationWarning, match="SyntheticShapes.*'imgsz'"):
        assert SyntheticShapes(2, image_size=64, target_size=(16, 24)).imgsz == (16, 24)
