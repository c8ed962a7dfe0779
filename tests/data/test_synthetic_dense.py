"""``SyntheticDense`` (``synthetic-dense[:N]``): deterministic crowded scenes with valid boxes in the promised
ranges, through the spec, the data module and ``detforge data synth --mode dense``."""

import json

import pytest
import torch
from torchvision.ops import box_iou

from detforge.commands.data import main as data_main
from detforge.data.spec import build_dataset
from detforge.data.synthetic_dense import SyntheticDense


@pytest.fixture(scope="module")
def dense():
    ds = SyntheticDense(6, seed=2)
    return ds, [ds[i] for i in range(len(ds))]


def test_sizes_counts_and_valid_boxes(dense):
    ds, samples = dense
    for i, (image, target) in enumerate(samples):
        _, h, w = image.shape
        assert image.shape[0] == 3 and image.dtype == torch.float32 and 0 <= image.min() <= image.max() <= 1
        assert 512 <= h <= 1024 and 512 <= w <= 1024 and ds.image_size(i) == (h, w)
        assert target["size"].tolist() == [h, w] and target["orig_size"].tolist() == [h, w]
        boxes, n = target["boxes"], target["boxes"].shape[0]
        assert 15 <= n <= 80  # a few of the 20-80 drawn may find no room
        assert boxes.dtype == torch.float32 and target["labels"].shape == (n,)
        assert torch.all((target["labels"] >= 0) & (target["labels"] < 5))
        assert torch.all(boxes[:, :2] >= 0) and torch.all(boxes[:, 2] <= w) and torch.all(boxes[:, 3] <= h)
        wh = boxes[:, 2:] - boxes[:, :2]
        assert torch.all(wh >= 1) and torch.all(wh.amax(1) <= 41)  # visible part of a <= 40 px shape
        box_area = wh.prod(1)
        assert torch.all(target["area"] > 0) and torch.all(target["area"] <= box_area)
        assert target["ignore"].shape == (n,) and not target["ignore"].any()
    assert len({s[0].shape for s in samples}) > 1  # sizes vary, sides drawn separately
    assert len({int(t["labels"].unique().numel()) for _, t in samples}) >= 1
    assert max(len(t["labels"].unique()) for _, t in samples) >= 4  # several classes


def test_crowded_objects_touch_and_overlap(dense):
    _, samples = dense
    overlapping = 0
    for _, target in samples:
        iou = box_iou(target["boxes"], target["boxes"]).fill_diagonal_(0)
        overlapping += int((iou.amax(1) > 0).sum())
    total = sum(t["boxes"].shape[0] for _, t in samples)
    assert overlapping > 0.3 * total


def test_deterministic_per_seed_and_index(dense):
    _, samples = dense
    again = SyntheticDense(6, seed=2)
    for i in (4, 1):  # random access in another order, fresh instance
        image, target = again[i]
        assert torch.equal(image, samples[i][0]) and torch.equal(target["boxes"], samples[i][1]["boxes"])
        assert torch.equal(target["labels"], samples[i][1]["labels"])
    other = SyntheticDense(2, seed=3)
    assert not torch.equal(other[0][1]["boxes"], samples[0][1]["boxes"][: len(other[0][1]["boxes"])])


def test_spec_splits_and_imgsz():
    train = build_dataset("synthetic-dense:8")
    val = build_dataset("synthetic-dense:8", split="val")
    assert isinstance(train, SyntheticDense) and len(train) == 8 and train.seed == 0
    assert len(val) == 32 and val.seed == 1
    assert len(build_dataset("synthetic-dense")) == 256
    image, target = build_dataset("synthetic-dense:2", imgsz=(128, 160))[0]
    assert image.shape == (3, 128, 160) and target["size"].tolist() == [128, 160]
    assert target["boxes"][:, 2].max() <= 160
    with pytest.raises(ValueError, match="RGB"):
        build_dataset("synthetic-dense:2", mode="L")
    with pytest.raises(ValueError, match="positive integer"):
        build_dataset("synthetic-dense:0")


def test_bad_arguments():
    with pytest.raises(ValueError, match="object_size_range"):
        SyntheticDense(2, object_size_range=(6, 400))
    with pytest.raises(ValueError, match="num_classes"):
        SyntheticDense(2, num_classes=9)


def test_data_module_keeps_the_drawn_sizes():
    from detforge.data.datamodule import DetectionDataModule

    dm = DetectionDataModule("synthetic-dense:2", imgsz=256, num_workers=0, augment=False, batch_size=2)
    dm.setup("fit")
    images, targets = next(iter(dm.train_dataloader()))
    assert images.shape == (2, 3, 256, 256) and dm.num_classes == 5
    assert all(max(t["size"].tolist()) == 256 for t in targets)  # letterboxed from 512-1024 px


def test_data_synth_dense_coco(tmp_path, capsys):
    argv = ["synth", "--out", str(tmp_path), "--format", "coco", "--mode", "dense"]
    assert data_main(argv + ["--num-images", "1", "--val-images", "0"]) == 0
    ann = json.loads((tmp_path / "annotations" / "instances_train.json").read_text())
    expected = SyntheticDense(1, seed=0)
    h, w = expected.image_size(0)
    assert (ann["images"][0]["height"], ann["images"][0]["width"]) == (h, w)
    assert len(ann["annotations"]) == len(expected[0][1]["boxes"])
