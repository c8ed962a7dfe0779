"""The decoded-image cache (``DetectionDataModule(cache="ram")``), the worker count by CPUs and the overhead
augmentation (vertical flips, 90-degree rotations)."""

from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors

from detforge.data import datamodule as datamodule_module
from detforge.data.cache import ImageCache, cache_images
from detforge.data.datamodule import DetectionDataModule, auto_num_workers
from detforge.data.synthetic import SyntheticShapes
from detforge.data.transforms import RandomRotate90, build_train_transforms
from detforge.data.writers import write_coco


@pytest.fixture(scope="module")
def coco_spec(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco_cache")
    ann = write_coco(SyntheticShapes(6, (40, 56), num_classes=2, seed=1), root, split="train")
    return f"coco:{ann}:{root / 'train'}"


def test_cache_serves_the_same_samples_without_decoding(coco_spec, monkeypatch):
    plain = DetectionDataModule(coco_spec, imgsz=32, num_workers=0, augment=False, val_data=coco_spec)
    cached = DetectionDataModule(
        coco_spec, imgsz=32, num_workers=0, augment=False, val_data=coco_spec, cache="ram"
    )
    plain.setup("fit")
    cached.setup("fit")
    cache = cached.train_dataset.image_cache
    assert len(cache) == 6 and cache.nbytes == 6 * 3 * 40 * 56
    assert len(cached.val_dataset.image_cache) == 6  # the validation images share the limit

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded a cached image")

    monkeypatch.setattr("detforge.data.base.load_image_uint8", no_decoding)
    for i in range(6):
        assert cached.train_dataset[i][0].shape == (3, 32, 32)
    monkeypatch.undo()
    for i in range(6):
        a, ta = cached.train_dataset[i]
        b, tb = plain.train_dataset[i]
        assert torch.equal(a, b) and torch.equal(ta["boxes"], tb["boxes"])


def test_cached_images_are_not_changed_by_augmentation(coco_spec):
    dm = DetectionDataModule(coco_spec, imgsz=32, num_workers=0, cache="ram", overhead=True, photometric=True)
    dm.setup("fit")
    before = {i: img.clone() for i, img in dm.train_dataset.image_cache.images.items()}
    for _ in range(3):
        for i in range(len(dm.train_dataset)):
            dm.train_dataset[i]
    for i, img in dm.train_dataset.image_cache.images.items():
        assert torch.equal(img, before[i])


def test_cache_limit_warns_and_keeps_what_fits(coco_spec):
    dm = DetectionDataModule(
        coco_spec, imgsz=32, num_workers=0, cache="ram", cache_gb=2.5 * 3 * 40 * 56 / 2**30
    )
    with pytest.warns(UserWarning, match=r"2 of 6 training images fit"):
        dm.setup("fit")
    assert len(dm.train_dataset.image_cache) == 2
    assert len(dm.train_dataset[5][0]) == 3  # the rest still loads from the files


def test_cache_rejects_a_dataset_without_one():
    with pytest.warns(UserWarning, match="no decoded-image cache"):
        assert cache_images(SyntheticShapes(2, 64), 1 << 20) is None
    cache = ImageCache(10)
    assert cache.add(0, torch.zeros(10, dtype=torch.uint8)) and not cache.add(
        1, torch.zeros(1, dtype=torch.uint8)
    )
    with pytest.raises(ValueError, match="cache must be one of"):
        DetectionDataModule("synthetic:4", cache="disk")


def test_auto_num_workers_by_cpus(monkeypatch):
    assert [auto_num_workers(n) for n in (1, 2, 4, 8, 16, 64)] == [0, 0, 2, 3, 5, 8]
    monkeypatch.setattr(datamodule_module, "auto_num_workers", lambda cpus=None: 0)
    assert DetectionDataModule("synthetic:4").num_workers == 0  # "auto" is the default
    with pytest.raises(ValueError, match="num_workers"):
        DetectionDataModule("synthetic:4", num_workers="many")


def test_rotate90_moves_boxes_with_the_pixels():
    """A bright rectangle's box follows it through every rotation: the box still frames exactly the
    bright pixels (non-square image, so width and height swap)."""
    image = torch.zeros(3, 30, 50, dtype=torch.uint8)
    image[:, 5:12, 20:41] = 255  # rows 5-11, columns 20-40
    boxes = tv_tensors.BoundingBoxes(
        torch.tensor([[20.0, 5.0, 41.0, 12.0]]), format="XYXY", canvas_size=(30, 50)
    )
    rotate = RandomRotate90()
    for k in range(4):
        out_img = rotate.transform(tv_tensors.Image(image), {"k": k})
        out_box = rotate.transform(boxes, {"k": k})
        assert out_box.canvas_size == tuple(out_img.shape[-2:])
        ys, xs = torch.nonzero(out_img[0] > 0, as_tuple=True)
        expected = torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32)
        torch.testing.assert_close(out_box.as_subclass(torch.Tensor), expected)


def test_overhead_pipeline_flips_and_rotates():
    torch.manual_seed(0)
    transform = build_train_transforms(32, vflip=0.5, rotate90=True, photometric=False, scale_jitter=None)
    names = [type(t).__name__ for t in transform.pipeline.transforms]
    assert "RandomRotate90" in names and "RandomVerticalFlip" in names
    image = torch.zeros(3, 32, 32, dtype=torch.uint8)
    image[:, :4, :4] = 255
    target = {"boxes": torch.tensor([[0.0, 0.0, 4.0, 4.0]]), "labels": torch.tensor([0])}
    corners = set()
    for _ in range(40):
        out, t = transform(image, dict(target))
        corners.add(tuple(t["boxes"][0].round().tolist()))
    assert len(corners) == 4  # the box reaches all four corners
    with pytest.raises(ValueError, match="vflip"):
        build_train_transforms(32, vflip=1.5)
