import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from detforge.data.synthetic import SyntheticShapes
from detforge.data.writers import write_coco, write_voc, write_yolo


def _dataset(mode="rgb", n=6):
    return SyntheticShapes(
        n, image_size=(48, 64), num_classes=8, seed=2, mode=mode, min_size=6, max_objects=4
    )


def _ignored_dataset():
    """A sequence whose tracks cross, so some boxes carry ``ignore``."""
    return SyntheticShapes(
        30, image_size=48, mode="sequence", sequence_length=30, max_objects=8, max_occlusion=0.2
    )


def _assert_same(written, read, tol=1.0, flags=True):
    assert len(written) == len(read)
    for i in range(len(written)):
        (image_w, target_w), (image_r, target_r) = written[i], read[i]
        assert image_r.shape == image_w.shape
        torch.testing.assert_close(image_r, image_w, atol=1 / 255 + 1e-6, rtol=0)  # PNG is lossless
        assert torch.equal(target_r["labels"], target_w["labels"]), i
        assert torch.allclose(target_r["boxes"], target_w["boxes"], atol=tol, rtol=0), i
        if flags:
            assert torch.equal(target_r["ignore"], target_w["ignore"]) or not target_w["ignore"].any()


def test_coco_round_trip_and_conventions(tmp_path):
    coco = pytest.importorskip("detforge.data.coco")
    ds = _dataset()
    ann_file = write_coco(ds, tmp_path, split="val")
    assert ann_file == tmp_path / "annotations" / "instances_val.json"
    data = json.loads(ann_file.read_text())
    assert [c["id"] for c in data["categories"]] == list(range(1, 9))
    assert data["categories"][0]["name"] == "circle"
    # COCO xywh: compare with the data set's xyxy boxes directly.
    first = next(a for a in data["annotations"] if a["image_id"] == data["images"][0]["id"])
    x1, y1, x2, y2 = ds[0][1]["boxes"][0].tolist()
    assert first["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1])
    assert first["category_id"] == int(ds[0][1]["labels"][0]) + 1
    from pycocotools.coco import COCO

    assert len(COCO(str(ann_file)).getImgIds()) == len(ds)
    read = coco.CocoDataset(tmp_path / "val", ann_file)
    assert read.class_names == ds.class_names
    _assert_same(ds, read, tol=1e-3, flags=False)


def test_coco_keeps_sequence_fields(tmp_path):
    ds = _ignored_dataset()
    data = json.loads(write_coco(ds, tmp_path).read_text())
    assert {"frame_index", "video_id"} <= set(data["images"][3])
    assert all("track_id" in a for a in data["annotations"])
    assert any(a["ignore"] for a in data["annotations"])


def test_voc_round_trip_and_conventions(tmp_path):
    voc = pytest.importorskip("detforge.data.voc")
    ds = _dataset()
    write_voc(ds, tmp_path, split="train")
    stems = (tmp_path / "ImageSets" / "Main" / "train.txt").read_text().split()
    assert len(stems) == len(ds)
    root = ET.parse(tmp_path / "Annotations" / f"{stems[0]}.xml").getroot()
    assert root.find("size/width").text == "64" and root.find("size/height").text == "48"
    box = root.find("object/bndbox")
    x1, y1, x2, y2 = ds[0][1]["boxes"][0].tolist()
    # 1-based corners: the pixel run x1..x2-1 (0-based) is xmin..xmax (1-based)
    assert [int(box.find(t).text) for t in ("xmin", "ymin", "xmax", "ymax")] == [x1 + 1, y1 + 1, x2, y2]
    read = voc.VOCDataset(tmp_path, split="train", class_names=ds.class_names)
    _assert_same(ds, read)


def test_voc_difficult_is_ignore(tmp_path):
    voc = pytest.importorskip("detforge.data.voc")
    ds = _ignored_dataset()
    write_voc(ds, tmp_path, split="val")
    read = voc.VOCDataset(tmp_path, split="val", class_names=ds.class_names)
    flags = [(read[i][1]["ignore"], ds[i][1]["ignore"]) for i in range(len(ds))]
    assert any(w.any() for _, w in flags)
    assert all(torch.equal(r, w) for r, w in flags)


def test_yolo_round_trip_thermal(tmp_path):
    yolo = pytest.importorskip("detforge.data.yolo")
    ds = _dataset("thermal")
    data_yaml = write_yolo(ds, tmp_path, split="train")
    write_yolo(_dataset("thermal", n=2), tmp_path, split="val")
    meta = yaml.safe_load(data_yaml.read_text())
    assert meta["train"] == "images/train" and meta["val"] == "images/val"
    assert meta["names"] == dict(enumerate(ds.class_names))
    stem = sorted((tmp_path / "labels" / "train").iterdir())[0]
    cls, cx, cy, w, h = stem.read_text().split("\n")[0].split()
    x1, y1, x2, y2 = ds[0][1]["boxes"][0].tolist()
    assert int(cls) == int(ds[0][1]["labels"][0])
    np.testing.assert_allclose(
        [float(v) for v in (cx, cy, w, h)],
        [(x1 + x2) / 128, (y1 + y2) / 96, (x2 - x1) / 64, (y2 - y1) / 48],
        atol=1e-5,
    )
    assert Image.open(next((tmp_path / "images" / "train").iterdir())).mode == "L"
    read = yolo.YoloDataset(data_yaml, split="train", mode="L")
    _assert_same(ds, read, tol=1e-3, flags=False)
    assert len(yolo.YoloDataset(data_yaml, split="val", mode="L")) == 2


def test_yolo_counts_dropped_ignore_boxes(tmp_path):
    ds = _ignored_dataset()
    targets = [ds[i][1] for i in range(len(ds))]
    ignored = sum(int(t["ignore"].sum()) for t in targets)
    with pytest.warns(UserWarning, match=f"{ignored} crowd/ignore boxes left out"):
        write_yolo(ds, tmp_path)
    lines = sum(len(p.read_text().splitlines()) for p in (tmp_path / "labels" / "train").iterdir())
    assert ignored > 0 and lines == sum(len(t["labels"]) for t in targets) - ignored


def test_jpeg_and_bad_options(tmp_path):
    ds = _dataset(n=2)
    write_coco(ds, tmp_path, image_format="jpg")
    assert sorted(p.suffix for p in (tmp_path / "train").iterdir()) == [".jpg", ".jpg"]
    with pytest.raises(ValueError, match="image_format"):
        write_coco(ds, tmp_path, image_format="gif")
    with pytest.raises(ValueError, match="split"):
        write_voc(ds, tmp_path, split="a/b")
