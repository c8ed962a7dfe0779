"""Pictures of the training data that a run writes into its folder as training starts.

- ``train_batches.jpg`` (:class:`TrainBatchPictures`): the first training batches exactly as the model receives
  them (after every augmentation, mosaic and multi-scale resize), their boxes drawn with class names: one block
  of images per batch, the blocks one under the other.
- ``labels.png`` (:class:`LabelsPlot`): class counts, box centres, box sizes at the input size and objects per
  image of the training data (:func:`detforge.data.label_stats.label_statistics`).

Both are written on rank 0 only, atomically (:func:`detforge.engine.callbacks.atomic_write`).
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.nn import functional as F

from detforge.data.transforms import build_train_transforms
from detforge.engine.callbacks import atomic_write, draw_ground_truth
from detforge.engine.trainer import RunError

__all__ = ["LabelsPlot", "TrainBatchPictures", "batch_picture", "for_display"]

# What ``normalize=True`` of detforge's transform builders subtracts and divides by (their defaults).
_DEFAULTS = inspect.signature(build_train_transforms).parameters
_NORM_MEAN, _NORM_STD = tuple(_DEFAULTS["mean"].default), tuple(_DEFAULTS["std"].default)
_TOLERANCE = 0.02  # float error of normalising and undoing it, plus the pipelines' interpolation overshoot


def for_display(images: Tensor) -> Tensor:
    """Images as the model receives them -> float32 ``[B, C, H, W]`` in [0, 1] on the CPU, for drawing.

    uint8 images are divided by 255; float images already in [0, 1] (detforge's pipelines) stay as they are;
    others are taken as normalised: with 3 channels the ``normalize=True`` mean / std of
    :func:`~detforge.data.transforms.build_train_transforms` is undone when that lands in [0, 1], else each
    image is stretched from its own min to its max.
    """
    was_float = images.is_floating_point()
    images = images.detach().to("cpu", torch.float32, copy=True)  # [B, C, H, W], never the batch itself
    if not was_float:
        return images.div_(255.0).clamp_(0, 1)
    lo, hi = (float(v) for v in images.aminmax())
    if lo >= -_TOLERANCE and hi <= 1 + _TOLERANCE:
        return images.clamp_(0, 1)
    if images.shape[1] == 3:
        mean = torch.tensor(_NORM_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(_NORM_STD).view(1, 3, 1, 1)
        undone = images * std + mean
        lo, hi = (float(v) for v in undone.aminmax())
        if lo >= -_TOLERANCE and hi <= 1 + _TOLERANCE:
            return undone.clamp_(0, 1)
    flat = images.flatten(1)  # [B, C * H * W]
    low, high = flat.amin(1).view(-1, 1, 1, 1), flat.amax(1).view(-1, 1, 1, 1)
    return ((images - low) / (high - low).clamp(min=1e-6)).clamp_(0, 1)


def batch_picture(
    images: Tensor,
    targets: Sequence[Mapping[str, Tensor]],
    class_names: Sequence[str] | None = None,
    max_images: int = 16,
    tile_size: int = 320,
) -> Tensor:
    """The first ``max_images`` images of a batch with their targets' boxes and class names drawn, tiled in a
    near-square grid (white gaps): uint8 ``Tensor[3, H', W']`` on the CPU.

    Args:
        images: ``[B, C, H, W]`` as the model receives it (see :func:`for_display`).
        targets: one dict per image: ``boxes`` (``[N, 4]`` xyxy pixels of ``images``), ``labels`` (``[N]``).
        class_names: names of the labels (None: the label numbers).
        max_images: the most images drawn.
        tile_size: images larger than this (longer side, pixels) are scaled down to it before drawing, so
            lines and names keep their size; smaller ones are drawn at their own size.
    """
    from torchvision.utils import make_grid

    n = min(int(images.shape[0]), max_images)
    shown = for_display(images[:n])  # [n, C, H, W]
    if shown.shape[1] not in (1, 3):
        shown = shown[:, :1]  # drawn as grey
    height, width = shown.shape[-2:]
    scale = min(1.0, tile_size / max(height, width))
    factor = torch.ones(4)
    if scale < 1.0:
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        shown = F.interpolate(shown, size=size, mode="bilinear", antialias=True)  # [n, C, h, w]
        factor = torch.tensor([size[1] / width, size[0] / height] * 2)
    names = list(class_names) if class_names else None
    drawn = [
        draw_ground_truth(
            image,
            {
                "boxes": t["boxes"].detach().float().cpu().reshape(-1, 4) * factor,  # [N, 4]
                "labels": t["labels"].detach().cpu().reshape(-1),
            },
            names,
        )
        for image, t in zip(shown.clamp_(0, 1), targets[:n], strict=True)
    ]
    grid = make_grid(torch.stack(drawn), nrow=math.ceil(math.sqrt(n)), padding=2, pad_value=255)
    return grid  # [3, H', W']


def _stack(blocks: list[Tensor], gap: int = 8) -> Tensor:
    """uint8 ``[3, h_i, w_i]`` pictures one under the other, left-aligned, ``gap`` white rows apart."""
    width = max(b.shape[-1] for b in blocks)
    parts: list[Tensor] = []
    for k, block in enumerate(blocks):
        if k:
            parts.append(torch.full((3, gap, width), 255, dtype=torch.uint8))
        parts.append(F.pad(block, (0, width - block.shape[-1]), value=255))  # [3, h_i, width]
    return torch.cat(parts, dim=1)  # [3, sum h_i + gaps, width]


def _images_and_targets(batch: Any) -> tuple[Tensor, list[Mapping[str, Tensor]]] | None:
    """``(images [B, C, H, W], targets)`` of a detforge batch (``detection_collate``'s layout), else None."""
    if not isinstance(batch, tuple | list) or len(batch) < 2:
        return None
    images, targets = batch[0], batch[1]
    if not isinstance(images, Tensor) or images.ndim != 4 or not isinstance(targets, tuple | list):
        return None
    if len(targets) != images.shape[0] or not all(
        isinstance(t, Mapping) and "boxes" in t and "labels" in t for t in targets
    ):
        return None
    return images, list(targets)


def _class_names(trainer: L.Trainer, pl_module: L.LightningModule) -> list[str] | None:
    names = getattr(pl_module, "class_names", None)
    if names:
        return list(names)
    with contextlib.suppress(AttributeError, RuntimeError):  # a data module not set up, or without names
        return list(trainer.datamodule.class_names) or None
    return None


class TrainBatchPictures(L.Callback):
    """``train_batches.jpg``: the first ``num_batches`` training batches as ``training_step`` gets them
    (augmented, mosaicked, resized by multi-scale training, on the device), up to ``max_images`` images of
    each with their boxes and class names, one grid per batch, the grids one under the other (multi-scale
    batches differ in size; each is drawn at its own).

    Drawn in ``on_train_batch_start`` (rank 0), which Lightning calls after the batch reached the device and
    the data module's ``on_after_batch_transfer``; the file is written once, atomically, when the last of the
    batches has been drawn, or when training ends (or fails) before that. It keeps only its own drawn uint8
    pictures until then, no reference to a batch, and costs one attribute check per step afterwards.

    Args:
        run_dir: the run folder.
        num_batches: how many batches the picture shows.
        max_images: the most images drawn of each batch.
        tile_size: images larger than this many pixels (longer side) are scaled down to it for drawing.
    """

    def __init__(
        self, run_dir: str | Path, num_batches: int = 3, max_images: int = 16, tile_size: int = 320
    ) -> None:
        for name, value in (
            ("num_batches", num_batches),
            ("max_images", max_images),
            ("tile_size", tile_size),
        ):
            if value < 1:
                raise ValueError(f"TrainBatchPictures: {name} must be >= 1, got {value}")
        self.run_dir = Path(run_dir)
        self.filename = "train_batches.jpg"
        self.num_batches = int(num_batches)
        self.max_images = int(max_images)
        self.tile_size = int(tile_size)
        self.path: Path | None = None
        self._blocks: list[Tensor] = []
        self._done = False

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._blocks, self._done, self.path = [], not trainer.is_global_zero, None

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._done:
            return
        parsed = _images_and_targets(batch)
        if parsed is None:
            self._done = True
            rank_zero_warn(
                f"{self.filename} not written: a training batch is {type(batch).__name__}, not "
                "(images [B, C, H, W], list of target dicts with boxes and labels)"
            )
            return
        images, targets = parsed
        names = _class_names(trainer, pl_module)
        self._blocks.append(batch_picture(images, targets, names, self.max_images, self.tile_size))
        if len(self._blocks) >= self.num_batches:
            self._write()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._done and self._blocks:  # training stopped before num_batches batches
            self._write()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if not self._done and self._blocks:  # the batches a failing run saw help to find out why
            with contextlib.suppress(RunError, OSError):  # the run's own error is the one to report
                self._write()

    def _write(self) -> None:
        from PIL import Image

        picture = _stack(self._blocks)  # [3, H, W] uint8
        self._blocks, self._done = [], True
        array = picture.permute(1, 2, 0).contiguous().numpy()  # [H, W, 3]
        path = self.run_dir / self.filename
        self.path = atomic_write(
            path, lambda tmp: Image.fromarray(array).save(tmp, format="JPEG", quality=90)
        )


def _training_dataset(trainer: L.Trainer) -> Any:
    dataset = getattr(trainer.datamodule, "train_dataset", None) if trainer.datamodule is not None else None
    if dataset is None:
        dataset = getattr(trainer.train_dataloader, "dataset", None)  # fit(model, train_dataloaders=...)
    return dataset


class LabelsPlot(L.Callback):
    """``labels.png`` at the start of training (rank 0, ``on_train_start``): boxes per class, box centres,
    box sizes at the input size and objects per image of the training data set
    (:func:`~detforge.data.label_stats.label_statistics` and
    :func:`~detforge.data.label_plots.plot_label_statistics`). Data sets whose labels cannot be read give a
    warning instead of the file.

    Args:
        run_dir: the run folder.
        max_images: count this many evenly spaced images; None: ``DEFAULT_MAX_IMAGES`` (10000) of a file
            reader's (annotations only), the doctor's ``DEFAULT_GENERATED_SAMPLES`` (128) of other data sets
            (each sample is rendered or loaded); 0: all. The figure says when only a sample was counted.
    """

    def __init__(self, run_dir: str | Path, max_images: int | None = None) -> None:
        if max_images is not None and max_images < 0:
            raise ValueError(f"LabelsPlot: max_images must be >= 0 or None, got {max_images}")
        self.run_dir = Path(run_dir)
        self.filename = "labels.png"
        self.max_images = max_images
        self.path: Path | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        from detforge.data.label_plots import plot_label_statistics
        from detforge.data.label_stats import label_statistics

        dataset = _training_dataset(trainer)
        if dataset is None or len(dataset) == 0:
            return
        imgsz = getattr(trainer.datamodule, "imgsz", None) or getattr(pl_module, "hparams", {}).get("imgsz")
        try:
            stats = label_statistics(dataset, int(imgsz) if imgsz else None, self.max_images)
        except (KeyError, TypeError, ValueError, IndexError, OSError) as err:
            rank_zero_warn(f"{self.filename} not written: the training labels could not be read ({err})")
            return
        self.path = atomic_write(self.run_dir / self.filename, lambda tmp: plot_label_statistics(stats, tmp))
