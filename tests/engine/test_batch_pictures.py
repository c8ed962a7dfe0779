"""``train_batches.jpg`` shows the batches the model trains on (augmented), and ``labels.png`` is written."""

from __future__ import annotations

import gc
import weakref
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from detforge.data.base import DetectionDataset, Record
from detforge.data.datamodule import DetectionDataModule
from detforge.engine.batch_pictures import LabelsPlot, TrainBatchPictures, batch_picture, for_display
from detforge.engine.trainer import default_callbacks

SIDE = 64
BOX = (4.0, 20.0, 22.0, 44.0)  # xyxy: the object sits at the left of the image
BOX_RGB = np.array([0xE6, 0x19, 0x4B])  # class 0's colour in detforge.engine.callbacks.draw_predictions


def _flipped_data(tmp_path, n: int = 2) -> DetectionDataset:
    """``n`` grey images with a white object at the left, its box, and an augmentation that always flips."""
    pixels = np.full((SIDE, SIDE, 3), 128, dtype=np.uint8)
    x1, y1, x2, y2 = (int(v) for v in BOX)
    pixels[y1:y2, x1:x2] = 255
    records = []
    for i in range(n):
        path = tmp_path / "images" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path)
        boxes = np.array([BOX], dtype=np.float32)
        records.append(Record(i, str(path), boxes, np.zeros(1, np.int64), SIDE, SIDE))
    return DetectionDataset(records, ["thing"], transforms=v2.RandomHorizontalFlip(p=1.0))


def _box_columns(picture: np.ndarray) -> np.ndarray:
    """x of the pixels drawn in the box colour (JPEG: within a tolerance) of an ``[H, W, 3]`` picture."""
    near = np.abs(picture.astype(np.int16) - BOX_RGB).max(axis=2) < 60  # [H, W]
    return np.nonzero(near)[1]


def test_picture_shows_the_flipped_box_after_one_step(tmp_path, tiny_detector):
    """A 1-step fit: the picture is written though fewer batches than ``num_batches`` were seen, and the box
    (and the white object) are on the right, where the always-on flip moved them; the annotation has them on
    the left, so a picture of un-augmented targets or images fails."""
    torch.manual_seed(0)
    model = tiny_detector(num_classes=1, imgsz=SIDE, class_names=["thing"])
    data = DetectionDataModule(_flipped_data(tmp_path), imgsz=SIDE, batch_size=1, num_workers=0)
    pictures, labels = TrainBatchPictures(tmp_path / "run", num_batches=3), LabelsPlot(tmp_path / "run")
    trainer = L.Trainer(
        max_steps=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[pictures, labels],
    )
    trainer.fit(model, datamodule=data)

    with Image.open(tmp_path / "run" / "train_batches.jpg") as image:
        assert image.format == "JPEG"
        picture = np.asarray(image.convert("RGB"))
    assert picture.shape == (SIDE, SIDE, 3)  # one batch of one image (make_grid adds no border to one)
    columns = _box_columns(picture)
    assert len(columns) > 20, "no box drawn"
    middle = picture.shape[1] / 2
    assert columns.min() > middle, f"box pixels at x={columns.min()}, left of the middle: not augmented"
    flipped = [SIDE - BOX[2], SIDE - BOX[0]]  # the box's x range after the flip
    assert flipped[0] - 2 <= np.median(columns) <= flipped[1] + 2
    grey = picture[SIDE // 2 - 4 : SIDE // 2 + 4].mean(axis=(0, 2))  # rows through the object, [W]
    assert grey[-20:-8].mean() > grey[8:20].mean() + 60  # the white object moved right with its box

    with Image.open(tmp_path / "run" / "labels.png") as image:
        assert image.format == "PNG"
        image.verify()
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["labels.png", "train_batches.jpg"]


def _batch(side: int, boxes: list[list[float]], n: int = 2) -> tuple[torch.Tensor, list[dict]]:
    images = torch.rand(n, 3, side, side)  # [n, 3, side, side]
    target = {
        "boxes": torch.tensor(boxes).reshape(-1, 4),
        "labels": torch.zeros(len(boxes), dtype=torch.int64),
    }
    return images, [dict(target) for _ in range(n)]


def test_multi_scale_batches_one_file_then_nothing(tmp_path, monkeypatch):
    """Three batches of different sizes: one picture, one block per batch (each at its own size), written
    once after the third; later batches cost nothing and no batch tensor is kept alive."""
    callback = TrainBatchPictures(tmp_path, num_batches=3, max_images=4)
    trainer = SimpleNamespace(is_global_zero=True, datamodule=None)
    module = SimpleNamespace(class_names=["a"])
    callback.on_fit_start(trainer, module)
    writes = []
    real = TrainBatchPictures._write
    monkeypatch.setattr(TrainBatchPictures, "_write", lambda self: writes.append(1) or real(self))
    sides = [64, 96, 32]
    for k, side in enumerate(sides):
        batch = _batch(side, [[2, 2, side / 2, side / 2]], n=5)
        alive = weakref.ref(batch[0])
        callback.on_train_batch_start(trainer, module, batch, k)
        del batch
        gc.collect()
        assert alive() is None, "the callback keeps a batch tensor"
        assert len(writes) == (k == 2)
    blocks = [batch_picture(*_batch(s, [[2, 2, s / 2, s / 2]], n=5), ["a"], max_images=4) for s in sides]
    # 4 images each: 2 x 2 grids of side + 2 px borders; blocks 8 white rows apart
    assert [tuple(b.shape[-2:]) for b in blocks] == [(2 + 2 * (s + 2),) * 2 for s in sides]
    with Image.open(tmp_path / "train_batches.jpg") as image:
        assert image.size == (max(b.shape[-1] for b in blocks), sum(b.shape[-2] for b in blocks) + 2 * 8)
    callback.on_train_batch_start(trainer, module, _batch(64, [[1, 1, 9, 9]]), 3)
    callback.on_train_end(trainer, module)
    assert len(writes) == 1


def test_other_ranks_and_other_batches_write_nothing(tmp_path):
    callback = TrainBatchPictures(tmp_path)
    module = SimpleNamespace(class_names=None)
    callback.on_fit_start(SimpleNamespace(is_global_zero=False, datamodule=None), module)
    callback.on_train_batch_start(None, module, _batch(32, [[1, 1, 9, 9]]), 0)
    callback.on_train_end(None, module)
    callback = TrainBatchPictures(tmp_path)
    with pytest.warns(UserWarning, match="train_batches.jpg not written"):
        callback.on_train_batch_start(None, module, {"image": torch.zeros(1, 3, 8, 8)}, 0)
    callback.on_train_end(None, module)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="num_batches"):
        TrainBatchPictures(tmp_path, num_batches=0)


def test_large_images_are_drawn_smaller_with_their_boxes():
    images, targets = _batch(640, [[0, 0, 320, 320]], n=1)
    picture = batch_picture(images, targets, max_images=16, tile_size=160)
    assert tuple(picture.shape) == (3, 160, 160)  # one tile (make_grid adds no border to one image)
    reference = batch_picture(
        torch.nn.functional.interpolate(images, size=160, mode="bilinear", antialias=True),
        [{"boxes": torch.tensor([[0.0, 0, 80, 80]]), "labels": torch.zeros(1, dtype=torch.int64)}],
    )
    assert torch.equal(picture, reference)  # the box scaled with the image


def test_for_display():
    torch.manual_seed(0)
    images = torch.rand(2, 3, 8, 8)
    assert torch.equal(for_display(images), images)
    assert torch.equal(for_display((images * 255).round().to(torch.uint8)), (images * 255).round() / 255)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(for_display((images - mean) / std), images, rtol=0, atol=1e-5)
    other = images * 10 - 3  # normalised some other way: each image stretched to [0, 1]
    stretched = for_display(other)
    for i in range(2):
        plain = (other[i] - other[i].min()) / (other[i].max() - other[i].min())
        torch.testing.assert_close(stretched[i], plain)


def test_default_callbacks_include_both(tmp_path):
    kinds = {type(c) for c in default_callbacks(tmp_path, progress_bar=False)}
    assert {TrainBatchPictures, LabelsPlot} <= kinds
    kinds = {type(c) for c in default_callbacks(tmp_path, progress_bar=False, artifacts=False)}
    assert not {TrainBatchPictures, LabelsPlot} & kinds
