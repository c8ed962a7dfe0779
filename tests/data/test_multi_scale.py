"""Multi-scale training (``MultiScale``, ``DetectionDataModule(multi_scale=...)``): sizes are multiples of the
model's largest stride inside the range, boxes follow the pixels, the size holds for ``every`` batches, the
last epochs are left alone, keep-ratio models get a shortest edge per image, and two gloo ranks agree."""

import json
import os
import socket
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from detforge.data.datamodule import DetectionDataModule
from detforge.data.multi_scale import MultiScale, model_stride
from detforge.data.transforms import pad_value


def _batch(n=4, h=128, w=128, sizes=None):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(n, 3, h, w, generator=g)
    targets = []
    for i in range(n):
        size = sizes[i] if sizes else (h, w)
        boxes = torch.tensor([[4.0, 6.0, 30.0, 50.0], [60.0, 20.0, 100.0, 90.0]])
        targets.append({"boxes": boxes, "area": torch.tensor([100.0, 200.0]), "size": torch.tensor(size)})
    return images, targets


def test_fixed_sizes_are_stride_multiples_in_range_and_boxes_follow():
    ms = MultiScale((0.5, 1.5), seed=0)
    images, targets = _batch()
    seen = set()
    for _ in range(40):
        out, new = ms(images, targets, stride=32)
        h, w = out.shape[-2:]
        assert h == w and h % 32 == 0 and 64 <= h <= 192
        seen.add(h)
        s = h / 128
        torch.testing.assert_close(new[0]["boxes"], targets[0]["boxes"] * s)
        torch.testing.assert_close(new[0]["area"], targets[0]["area"] * s * s)
        assert new[0]["size"].tolist() == [h, w]
        if h != 128:
            torch.testing.assert_close(
                out, F.interpolate(images, size=(h, w), mode="bilinear", antialias=h < 128)
            )
    assert seen == {64, 96, 128, 160, 192}  # every multiple in the range gets drawn
    assert targets[0]["boxes"][0, 0] == 4.0  # the input targets are left alone


def test_non_square_batch_keeps_its_aspect_ratio():
    ms = MultiScale((0.5, 1.0), seed=1)
    images, targets = _batch(h=96, w=192)
    for _ in range(10):
        out, _ = ms(images, targets, stride=32)
        h, w = out.shape[-2:]
        assert w % 32 == 0 and h % 32 == 0 and 96 <= w <= 192 and abs(h - w / 2) <= 16  # nearest multiple


def test_size_holds_for_every_batches_and_repeats_per_seed():
    images, targets = _batch(n=1)
    a = [MultiScale((0.5, 2.0), every=3, seed=5)(images, targets, 32)[0].shape[-1] for _ in range(1)]
    ms = MultiScale((0.5, 2.0), every=3, seed=5)
    sizes = [ms(images, targets, 32)[0].shape[-1] for _ in range(12)]
    assert all(sizes[i] == sizes[i - i % 3] for i in range(12)) and len(set(sizes)) > 1
    assert sizes[0] == a[0]
    again = MultiScale((0.5, 2.0), every=3, seed=5)
    assert sizes == [again(images, targets, 32)[0].shape[-1] for _ in range(12)]


def test_keep_ratio_draws_a_shortest_edge_per_image():
    ms = MultiScale((0.5, 1.5), seed=2, num_draws=3)
    sizes = [(128, 64), (100, 128), (64, 64)]  # letterboxed contents
    images, targets = _batch(n=3, sizes=sizes)
    shortest = set()
    for _ in range(20):
        out, new = ms(images, targets, stride=32, mode="keep_ratio")
        assert out.shape[-2] % 32 == 0 and out.shape[-1] % 32 == 0
        for (h, w), t, image in zip(sizes, new, out):
            nh, nw = t["size"].tolist()
            assert abs(nh / nw - h / w) < 0.05  # the aspect ratio stays
            assert max(nh, nw) <= 1.5 * 128 + 1  # the long edge is capped
            if max(nh, nw) < 1.5 * 128 - 1:
                assert min(nh, nw) % 32 == 0 and 64 <= min(nh, nw) <= 192
                shortest.add(min(nh, nw))
            assert nh <= out.shape[-2] and nw <= out.shape[-1]
            assert torch.all(image[:, nh:, :] == pad_value(image.dtype))  # padded with the grey below
        sx = new[1]["size"][1] / 128  # image 1's content is 100 x 128
        torch.testing.assert_close(new[1]["boxes"][:, 2] / targets[1]["boxes"][:, 2], sx.expand(2).float())
        h1, w1 = new[1]["size"].tolist()
        resized = F.interpolate(images[1:2, :, :100], size=(h1, w1), mode="bilinear", antialias=h1 < 100)
        torch.testing.assert_close(out[1:2, :, :h1, :w1], resized)
    assert len(shortest) > 2


def test_bad_options():
    with pytest.raises(ValueError, match="multi_scale"):
        MultiScale((1.5, 0.5))
    with pytest.raises(ValueError, match="multi_scale_every"):
        DetectionDataModule(multi_scale=(0.5, 1.5), multi_scale_every=0)
    with pytest.raises(ValueError, match="mode"):
        MultiScale((0.5, 1.5))(*_batch(), stride=32, mode="square")


class _Model(nn.Module):
    strides = (8, 16, 32, 64)


class _KeepRatio(_Model):
    keeps_aspect_ratio = True


def _hooked(dm, model, epoch=0, max_epochs=10, training=True):
    dm.trainer = SimpleNamespace(
        training=training,
        current_epoch=epoch,
        max_epochs=max_epochs,
        lightning_module=SimpleNamespace(model=model),
    )
    return dm.on_after_batch_transfer(_batch(), 0)


def test_data_module_hook_stride_off_epochs_and_eval():
    dm = DetectionDataModule(imgsz=128, multi_scale=(0.5, 1.5), multi_scale_off_epochs=2, batch_size=4)
    for _ in range(10):
        images, _ = _hooked(dm, _Model())
        assert images.shape[-1] % 64 == 0 and 64 <= images.shape[-1] <= 192  # the largest stride: 64
    for epoch, training in ((8, True), (9, True), (0, False)):  # last two epochs, and validation: untouched
        assert _hooked(dm, _Model(), epoch=epoch, training=training)[0].shape[-2:] == (128, 128)
    for _ in range(5):
        images, targets = _hooked(dm, _KeepRatio())  # per image: the drawn shortest edge of the content
        assert images.shape[-1] % 64 == 0 and min(targets[0]["size"].tolist()) % 64 == 0
    assert model_stride(_Model()) == 64 and model_stride(nn.Linear(1, 1)) == 32
    off = DetectionDataModule(imgsz=128)
    assert _hooked(off, _Model())[0].shape[-2:] == (128, 128)


def test_two_stage_and_dense_models_declare_their_resize():
    from detforge.models.base import Detector
    from detforge.models.faster_rcnn.model import FasterRCNN

    assert FasterRCNN.keeps_aspect_ratio and not Detector.keeps_aspect_ratio


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.timeout(600)  # a few seconds on an idle machine; importing torch in two processes dominates
def test_sizes_agree_on_two_gloo_ranks(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import ddp_multi_scale

    mp.spawn(ddp_multi_scale.worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads(Path(tmp_path, f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["fixed"] == ranks[1]["fixed"]  # different seeds per rank: rank 0's draws won
    assert len({tuple(s) for s in ranks[0]["fixed"]}) > 1
    # keep_ratio: the same shortest edges per image on both ranks (rank 1's batches are smaller at times).
    assert [c[1] for c in ranks[0]["keep_ratio"]] == [c[1] for c in ranks[1]["keep_ratio"]]
    assert len({tuple(c[1]) for c in ranks[0]["keep_ratio"]}) > 1


def test_fit_resizes_training_batches_only_until_the_last_epochs(tmp_path):
    """A real ``Trainer.fit`` on sliced ``synthetic-dense`` tiles: the hook runs where Lightning calls it."""
    import lightning as L

    from detforge.models.detector import ObjectDetector

    class Shapes(L.Callback):
        def __init__(self):
            self.train, self.val = [], []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.train.append((trainer.current_epoch, tuple(batch[0].shape[-2:])))

        def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
            self.val.append(tuple(batch[0].shape[-2:]))

    dm = DetectionDataModule(
        "synthetic-dense:2",
        imgsz=128,
        batch_size=2,
        num_workers=0,
        slice=256,
        multi_scale=(0.5, 1.5),
        multi_scale_off_epochs=1,
        dataset_kwargs={"cache": True},
    )
    model = ObjectDetector(
        backbone="test_resnet",
        num_classes=5,
        fpn_channels=16,
        head_num_convs=1,
        strides=(8, 16, 32),
        compile_model=False,
        deterministic=False,
    )
    shapes = Shapes()
    trainer = L.Trainer(
        max_epochs=2,
        limit_train_batches=4,
        limit_val_batches=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
        callbacks=[shapes],
    )
    trainer.fit(model, dm)
    first = [hw for epoch, hw in shapes.train if epoch == 0]
    assert all(h % 32 == 0 and 64 <= h <= 192 and h == w for h, w in first) and len(set(first)) > 1
    assert all(hw == (128, 128) for epoch, hw in shapes.train if epoch == 1)
    assert shapes.val and all(hw == (128, 128) for hw in shapes.val)
