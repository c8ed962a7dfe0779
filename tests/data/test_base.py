"""DetectionDataset over hand-made records: the target contract of docs/architecture.md."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import detforge.data
from detforge.data.base import DetectionDataset, Record


def _records(tmp_path):
    Image.new("RGB", (20, 10), (255, 0, 0)).save(tmp_path / "a.png")
    Image.new("RGB", (8, 8), (0, 0, 255)).save(tmp_path / "b.png")
    boxes = np.array([[0, 0, 20, 10], [2, 3, 4, 5]], np.float32)
    return [
        Record(5, str(tmp_path / "a.png"), boxes, np.array([1, 0]), 10, 20, iscrowd=np.array([False, True])),
        Record(6, str(tmp_path / "b.png"), np.zeros((0, 4), np.float32), np.zeros(0, np.int64), 8, 8),
    ]


def test_target_contract(tmp_path):
    ds = DetectionDataset(_records(tmp_path), ["x", "y"])
    image, target = ds[0]
    assert image.shape == (3, 10, 20) and image.dtype == torch.float32 and image[0].min() == 1.0
    assert set(target) == {"boxes", "labels", "image_id", "orig_size", "size", "iscrowd", "ignore", "area"}
    assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
    assert target["iscrowd"].tolist() == [False, True] and target["ignore"].tolist() == [False, False]
    torch.testing.assert_close(target["area"], torch.tensor([200.0, 4.0]))
    assert target["image_id"] == 5 and target["size"].dtype == torch.int64
    _, empty = ds[-1]
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,) and empty["area"].shape == (0,)
    # the dataset's own arrays are not modified through a returned target
    target["boxes"] += 100
    assert ds[0][1]["boxes"].max() == 20


def test_imgsz_and_mode_l(tmp_path):
    ds = DetectionDataset(_records(tmp_path), ["x", "y"], imgsz=(20, 10), mode="L")
    image, target = ds[0]
    assert image.shape == (1, 20, 10)
    torch.testing.assert_close(target["boxes"], torch.tensor([[0.0, 0.0, 10.0, 20.0], [1.0, 6.0, 2.0, 10.0]]))
    assert target["orig_size"].tolist() == [10, 20] and target["size"].tolist() == [20, 10]


def test_annotation_size_differing_from_file_warns(tmp_path):
    records = _records(tmp_path)
    records[1].height = 9
    with pytest.warns(UserWarning, match=r"b\.png: annotation says 9x8"):
        DetectionDataset(records, ["x", "y"])[1]


def test_empty_dataset_and_bad_arguments(tmp_path):
    ds = DetectionDataset([], ["x"])
    assert len(ds) == 0 and ds.num_classes == 1 and ds.skipped == {}
    with pytest.raises(ValueError, match="'RGB', 'L'"):
        DetectionDataset([], ["x"], mode="rgb")
    with pytest.raises(ValueError, match="imgsz"):
        DetectionDataset([], ["x"], imgsz=(0, 4))


def test_package_exports_readers_and_lazy_names():
    assert detforge.data.CocoDataset.__name__ == "CocoDataset"
    assert callable(detforge.data.run_doctor)
    with pytest.raises(AttributeError, match="no_such_thing"):
        detforge.data.no_such_thing  # noqa: B018


def test_target_size_is_the_deprecated_name_of_imgsz(tmp_path):
    with pytest.warns(DeprecationWarning, match="'target_size' is deprecated.*use 'imgsz'"):
        ds = DetectionDataset(_records(tmp_path), ["x", "y"], target_size=(20, 10))
    assert ds.imgsz == (20, 10) and ds[0][0].shape == (3, 20, 10)
    with pytest.warns(DeprecationWarning, match="imgsz"):
        assert ds.target_size == (20, 10)
    assert DetectionDataset(_records(tmp_path), ["x", "y"], imgsz=12).imgsz == (12, 12)  # int: a square
    with pytest.raises(TypeError, match="both 'imgsz' and its deprecated name 'target_size'"):
        DetectionDataset(_records(tmp_path), ["x", "y"], imgsz=(4, 4), target_size=(4, 4))


def test_raw_v2_pipeline_moves_the_boxes(make_coco):
    """A plain torchvision v2 pipeline as ``transforms=`` flips image and boxes alike (it is wrapped)."""
    from torchvision.transforms import v2 as T

    from detforge.data.coco import CocoDataset

    image_dir, ann_file = make_coco()
    plain = CocoDataset(image_dir, ann_file)
    flipped = CocoDataset(image_dir, ann_file, transforms=T.Compose([T.RandomHorizontalFlip(1)]))
    (image, target), (f_image, f_target) = plain[0], flipped[0]
    w = image.shape[-1]
    assert f_image.dtype == torch.float32 and torch.allclose(f_image, image.flip(-1))
    expected = torch.stack([w - target["boxes"][:, 2], target["boxes"][:, 1], w - target["boxes"][:, 0],
                            target["boxes"][:, 3]], dim=1)
    assert type(f_target["boxes"]) is torch.Tensor and torch.allclose(f_target["boxes"], expected)
    assert torch.equal(f_target["labels"], target["labels"]) and torch.equal(f_target["iscrowd"], target["iscrowd"])


def test_raw_v2_pipeline_on_synthetic_and_mosaic():
    from torchvision.transforms import v2 as T

    from detforge.data.mosaic import Mosaic
    from detforge.data.synthetic import SyntheticShapes

    plain = SyntheticShapes(num_images=2, image_size=64, num_classes=3, seed=0)
    flipped = SyntheticShapes(num_images=2, image_size=64, num_classes=3, seed=0, transforms=T.RandomHorizontalFlip(1))
    (_, target), (_, f_target) = plain[0], flipped[0]
    assert torch.allclose(f_target["boxes"][:, [2, 0]], 64 - target["boxes"][:, [0, 2]])
    mosaic = Mosaic(plain, 64, prob=0.0, transforms=T.RandomHorizontalFlip(1))
    assert mosaic[0][0].dtype == torch.float32
