import pytest
import torch

from detforge.data.datamodule import DetectionDataModule, detection_collate
from detforge.data.mosaic import Mosaic
from detforge.data.synthetic import SyntheticShapes
from detforge.data.transforms import PAD_VALUE, build_val_transforms, pad_value
from detforge.targets import image_sizes_of


def _sample(c, h, w, n=1, image_id=0):
    target = {
        "boxes": torch.tensor([[0.0, 0.0, 2.0, 2.0]] * n).reshape(-1, 4),
        "labels": torch.zeros(n).long(),
    }
    target["image_id"] = image_id
    return torch.rand(c, h, w), target


def test_collate_stacks_equal_sizes():
    batch = [_sample(3, 8, 6, n) for n in (0, 1, 3)]
    images, targets = detection_collate(batch)
    assert images.shape == (3, 3, 8, 6)
    assert [t["boxes"].shape[0] for t in targets] == [0, 1, 3]
    assert all(t["size"].tolist() == [8, 6] for t in targets)
    assert torch.equal(images[1], batch[1][0])


def test_collate_puts_each_target_key_in_one_buffer():
    batch = [_sample(3, 4, 4, n, image_id=n) for n in (2, 0, 3)]
    for _, target in batch:
        target["size"] = torch.tensor([4, 4])
    _, targets = detection_collate(batch)
    for key in ("boxes", "labels", "size"):
        assert len({t[key].untyped_storage().data_ptr() for t in targets}) == 1, key
        for (_, original), target in zip(batch, targets):
            assert torch.equal(target[key], original[key]) and target[key].dtype == original[key].dtype
    assert [t["image_id"] for t in targets] == [2, 0, 3]


def test_collate_pads_bottom_right_with_the_letterbox_grey_and_keeps_sizes():
    batch = [_sample(1, 5, 9), _sample(1, 7, 4), _sample(1, 2, 2)]
    batch[0][1]["size"] = torch.tensor([5, 9])
    images, targets = detection_collate(batch)
    assert images.shape == (3, 1, 7, 9)
    assert image_sizes_of(targets, images) == [(5, 9), (7, 4), (2, 2)]
    for (image, _), padded in zip(batch, images):
        h, w = image.shape[-2:]
        assert torch.equal(padded[:, :h, :w], image)
        grey = torch.tensor(pad_value(torch.float32))  # 114 / 255
        assert torch.all(padded[:, h:, :] == grey) and torch.all(padded[:, :, w:] == grey)
    assert "size" not in batch[1][1]  # the caller's dicts are not modified


def test_collate_pads_uint8_images_with_the_uint8_grey_like_the_letterbox():
    small = (
        torch.zeros(3, 4, 4, dtype=torch.uint8),
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0).long()},
    )
    big = (
        torch.zeros(3, 6, 4, dtype=torch.uint8),
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0).long()},
    )
    images, _ = detection_collate([small, big])
    assert images.dtype == torch.uint8 and torch.all(images[0, :, 4:] == PAD_VALUE)
    assert torch.all(images[0, :, :4] == 0) and torch.all(images[1] == 0)
    # a letterboxed image and a collate-padded one have the same grey
    letterboxed, _ = build_val_transforms(8)(torch.zeros(3, 4, 8, dtype=torch.uint8), dict(small[1]))
    collated, _ = detection_collate([(torch.zeros(3, 4, 8), {}), (torch.zeros(3, 8, 8), {})])
    assert torch.equal(collated[0, :, 4:], letterboxed[:, 4:])


def test_collate_rejects_mixed_channels_and_empty_batches():
    with pytest.raises(ValueError, match="sample 1 .*image_id=5"):
        detection_collate([_sample(3, 4, 4), _sample(1, 4, 4, image_id=5)])
    with pytest.raises(ValueError, match="empty"):
        detection_collate([])


def test_datamodule_from_spec_string():
    dm = DetectionDataModule("synthetic:8", imgsz=64, batch_size=4, num_workers=0)
    dm.setup("fit")
    assert dm.num_classes == 5 and dm.class_names[:2] == ["circle", "rectangle"]
    assert len(dm.train_dataset) == 8 and len(dm.val_dataset) == 32
    images, targets = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, 64, 64) and images.dtype == torch.float32 and len(targets) == 4
    images, targets = next(iter(dm.val_dataloader()))
    assert images.shape == (4, 3, 64, 64)
    assert [t["image_id"] for t in targets] == [0, 1, 2, 3]  # val is not shuffled
    assert all(t["size"].tolist() == [64, 64] for t in targets)


def test_datamodule_with_objects_mosaic_and_train_size():
    train = SyntheticShapes(10, image_size=48, min_size=6)
    val = SyntheticShapes(3, image_size=48, seed=1, transforms=build_val_transforms(48), min_size=6)
    dm = DetectionDataModule(
        train, imgsz=48, batch_size=3, num_workers=0, mosaic=1.0, val_data=val, train_size=6
    )
    dm.setup()
    assert len(dm.train_dataset) == 6 and isinstance(dm.train_dataset.dataset, Mosaic)
    assert dm.num_classes == 5
    images, _ = next(iter(dm.train_dataloader()))
    assert images.shape == (3, 3, 48, 48)
    assert len(list(dm.val_dataloader())) == 1
    bare = DetectionDataModule(SyntheticShapes(4, image_size=32, min_size=6), num_workers=0)
    assert bare.val_dataloader() == []  # an object has no val split of its own
    with pytest.raises(ValueError, match="mosaic"):
        DetectionDataModule(mosaic=2.0)


def test_workers_are_seeded_so_batches_repeat():
    def first_batch():
        dm = DetectionDataModule("synthetic:8", imgsz=32, batch_size=4, num_workers=2, seed=7)
        loader = dm.train_dataloader()
        assert loader.persistent_workers and loader.num_workers == 2
        assert loader.pin_memory == torch.cuda.is_available()
        return next(iter(loader))

    a, b = first_batch(), first_batch()
    assert torch.equal(a[0], b[0])
    assert [t["image_id"] for t in a[1]] == [t["image_id"] for t in b[1]]


def test_augmentation_switches_reach_the_train_pipeline():
    from torchvision.transforms import v2

    def steps(dm):
        dm.setup("fit")
        return [type(t) for t in dm.train_dataset.transforms.pipeline.transforms]

    full = steps(DetectionDataModule("synthetic:4", imgsz=32, num_workers=0))
    assert v2.RandomPhotometricDistort in full and v2.ScaleJitter in full
    light = steps(
        DetectionDataModule("synthetic:4", imgsz=32, num_workers=0, photometric=False, scale_jitter=None)
    )
    assert v2.RandomPhotometricDistort not in light and v2.ScaleJitter not in light
    jitter = DetectionDataModule("synthetic:4", imgsz=32, num_workers=0, scale_jitter=(0.8, 1.2))
    jitter.setup("fit")
    scale = next(
        t for t in jitter.train_dataset.transforms.pipeline.transforms if isinstance(t, v2.ScaleJitter)
    )
    assert tuple(scale.scale_range) == (0.8, 1.2)
    images, _ = next(iter(jitter.train_dataloader()))
    assert images.shape[-2:] == (32, 32)


def test_test_split_loader_and_clear_error_without_one():
    from detforge.data.datamodule import DetectionDataModule

    dm = DetectionDataModule(data="synthetic:8", test_data="synthetic:4", imgsz=64, batch_size=4, num_workers=0)
    dm.setup("test")
    assert dm.train_dataset is None and dm.val_dataset is None and len(dm.test_dataset) > 0
    images, targets = next(iter(dm.test_dataloader()))
    assert images.shape[-2:] == (64, 64) and len(targets) == images.shape[0]
    assert dm.num_classes == dm.test_dataset.num_classes
    with pytest.raises(ValueError, match="no test split.*test_data"):
        DetectionDataModule(data="synthetic:8", imgsz=64, num_workers=0).test_dataloader()
