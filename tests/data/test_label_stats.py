"""Label statistics (``labels.png``) against counts done plainly, image by image, through ``dataset[i]``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Subset

from detforge.data.base import DetectionDataset, Record
from detforge.data.doctor import examine
from detforge.data.label_plots import plot_label_statistics
from detforge.data.label_stats import LabelStatistics, label_statistics
from detforge.data.synthetic import SyntheticShapes
from detforge.data.transforms import build_train_transforms
from detforge.engine.callbacks import atomic_write

from .conftest import write_image

NAMES = ["cat", "dog", "bird"]


def _records(tmp_path, n: int = 7) -> list[Record]:
    """``n`` image files of different sizes, 0-5 random boxes each (none in image 1), some crowd / ignored;
    every third record states no size (read from the file's header)."""
    rng = np.random.default_rng(0)
    records = []
    for i in range(n):
        h, w = int(rng.integers(20, 60)), int(rng.integers(20, 60))
        path = tmp_path / f"img{i}.png"
        write_image(path, h, w, seed=i)
        k = 0 if i == 1 else int(rng.integers(1, 6))
        xy = rng.uniform(0, [w - 6, h - 6], size=(k, 2))
        wh = rng.uniform(2, 6, size=(k, 2))
        boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
        records.append(
            Record(
                image_id=i,
                image_path=str(path),
                boxes=boxes,
                labels=rng.integers(0, len(NAMES), k).astype(np.int64),
                height=None if i % 3 == 2 else h,
                width=None if i % 3 == 2 else w,
                iscrowd=rng.random(k) < 0.2,
                ignore=rng.random(k) < 0.2,
            )
        )
    return records


def _plain(dataset, indices, imgsz: int | None) -> dict:
    """The reference: each sample through ``dataset[i]`` (images decoded), boxes measured one by one."""
    labels, centres, sizes, per_image, special = [], [], [], [], 0
    for i in indices:
        image, target = dataset[i]
        h, w = image.shape[-2:]
        scale = imgsz / max(h, w) if imgsz is not None else 1.0
        for (x1, y1, x2, y2), label in zip(target["boxes"].tolist(), target["labels"].tolist(), strict=True):
            labels.append(label)
            centres.append(((x1 + x2) / 2 / w, (y1 + y2) / 2 / h))
            sizes.append(((x2 - x1) * scale, (y2 - y1) * scale))
        per_image.append(len(target["labels"]))
        special += int((target["iscrowd"] | target["ignore"]).sum())
    return {
        "labels": torch.tensor(labels, dtype=torch.int64),
        "centres": torch.tensor(centres, dtype=torch.float32).reshape(-1, 2),
        "sizes": torch.tensor(sizes, dtype=torch.float32).reshape(-1, 2),
        "per_image": torch.tensor(per_image, dtype=torch.int64),
        "special": special,
    }


def _check(stats: LabelStatistics, ref: dict) -> None:
    assert torch.equal(stats.labels, ref["labels"])
    torch.testing.assert_close(stats.centres, ref["centres"], rtol=0, atol=1e-5)
    torch.testing.assert_close(stats.sizes, ref["sizes"], rtol=1e-5, atol=1e-4)
    assert torch.equal(stats.objects_per_image, ref["per_image"])
    assert stats.crowd_or_ignored == ref["special"]
    plain_counts = [sum(1 for label in ref["labels"].tolist() if label == c) for c in range(len(NAMES))]
    assert stats.per_class.tolist() == plain_counts


@pytest.mark.parametrize("stretch", [None, (30, 50)])
@pytest.mark.parametrize("imgsz", [64, None])
def test_file_reader_matches_samples_without_decoding(tmp_path, monkeypatch, stretch, imgsz):
    dataset = DetectionDataset(_records(tmp_path), NAMES, imgsz=stretch)
    reference = _plain(dataset, range(len(dataset)), imgsz)
    decoded = []
    monkeypatch.setattr("detforge.data.base.load_image_uint8", lambda *a: decoded.append(a) or 1 / 0)
    stats = label_statistics(dataset, imgsz)
    assert not decoded  # the annotations only (image sizes from the headers)
    _check(stats, reference)
    assert stats.num_images == stats.images_counted == 7 and stats.class_names == NAMES
    assert stats.objects_per_image[1] == 0 and stats.imgsz == imgsz


def test_per_class_equals_the_doctors_count(tmp_path):
    dataset = DetectionDataset(_records(tmp_path), NAMES)
    assert label_statistics(dataset, 64).per_class.tolist() == examine(dataset).per_class


def test_sample_and_subset(tmp_path):
    dataset = DetectionDataset(_records(tmp_path, n=10), NAMES)
    stats = label_statistics(dataset, 64, max_images=4)
    _check(stats, _plain(dataset, [0, 3, 6, 9], 64))  # evenly spaced, first and last included
    assert stats.images_counted == 4 and stats.num_images == 10
    subset = Subset(dataset, [8, 2, 5])
    _check(label_statistics(subset, 64), _plain(dataset, [8, 2, 5], 64))
    assert label_statistics(subset, 64).num_images == 3


def test_generated_data_is_counted_before_augmentation():
    """A synthetic set with a training augmentation: counted as rendered (and stretched to its ``imgsz``),
    as the same set without transforms returns its samples."""
    kwargs = dict(num_images=6, image_size=64, num_classes=3, imgsz=(48, 80))
    augmented = SyntheticShapes(**kwargs, transforms=build_train_transforms(96))
    plain = SyntheticShapes(**kwargs)
    stats = label_statistics(augmented, 96)
    _check(stats, _plain(plain, range(6), 96))
    assert label_statistics(augmented, 96, max_images=2).images_counted == 2


def test_bad_arguments(tmp_path):
    dataset = DetectionDataset(_records(tmp_path, n=2), NAMES)
    with pytest.raises(ValueError, match="imgsz"):
        label_statistics(dataset, 0)
    with pytest.raises(ValueError, match="max_images"):
        label_statistics(dataset, 64, max_images=-1)


def test_labels_png_is_written(tmp_path):
    dataset = DetectionDataset(_records(tmp_path), NAMES)
    stats = label_statistics(dataset, 64, max_images=5)
    path = atomic_write(tmp_path / "labels.png", lambda tmp: plot_label_statistics(stats, tmp))
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 500
        image.verify()
    empty = DetectionDataset([r for r in _records(tmp_path) if len(r.labels) == 0], NAMES)
    path = plot_label_statistics(label_statistics(empty, 64), tmp_path / "empty.png")
    with Image.open(path) as image:
        assert image.format == "PNG"
