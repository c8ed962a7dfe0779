"""Batching: ``detection_collate`` and the Lightning ``DetectionDataModule``.

A batch is ``(images Tensor[B, C, H, W], targets list[dict])`` (docs/architecture.md): images of one size are
stacked, otherwise padded with grey (``transforms.PAD_VALUE``) on the bottom/right to the batch's largest height and width; every target keeps
its unpadded ``size`` (h, w).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import lightning as L
import torch
from lightning.fabric.utilities.seed import pl_worker_init_function
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from detforge.data.mosaic import Mosaic, keep_uint8
from detforge.data.multi_scale import MultiScale, model_stride
from detforge.data.sliced import SlicedDataset
from detforge.data.transforms import build_train_transforms, build_val_transforms, pad_value
from detforge.errors import DataError, InvalidValueError

__all__ = ["DetectionDataModule", "auto_num_workers", "detection_collate"]


def auto_num_workers(cpus: int | None = None) -> int:
    """DataLoader workers for ``num_workers="auto"``: none on 1-2 usable CPUs (a worker process would take a
    core from the model's intra-op threads, while decoding and augmenting a batch costs a few per cent of a
    training step there, less with ``cache="ram"``), else ``cpus // 4 + 1`` up to 8 (2 on 4 CPUs, 5 on 16).
    ``cpus``: the usable CPUs (default :func:`detforge.engine.threads.available_cpus`)."""
    if cpus is None:
        from detforge.engine.threads import available_cpus

        cpus = available_cpus()
    return 0 if cpus <= 2 else min(8, cpus // 4 + 1)


def detection_collate(batch: Sequence[tuple[Tensor, dict]]) -> tuple[Tensor, list[dict]]:
    """Collate ``(image Tensor[C, H_i, W_i], target)`` pairs into ``(Tensor[B, C, H, W], list[dict])``.

    Equal sizes are stacked; otherwise each image is padded bottom/right to the largest H and W with the
    letterbox grey, :data:`~detforge.data.transforms.PAD_VALUE` in the images' scale (114 for uint8, 114 / 255
    for float images in [0, 1]; normalised images get that same number, not the normalised grey). A target
    without ``size`` gets its image's (h, w).

    Raises:
        ValueError: the batch is empty, or its images differ in channel count or dtype.
    """
    if len(batch) == 0:
        raise ValueError("detection_collate got an empty batch")
    images = [sample[0] for sample in batch]
    targets = [dict(sample[1]) for sample in batch]
    first = images[0]
    for i, (image, target) in enumerate(zip(images, targets)):
        if image.ndim != 3 or image.shape[0] != first.shape[0] or image.dtype != first.dtype:
            raise ValueError(
                f"detection_collate: sample {i} (image_id={target.get('image_id')!r}) has an image of shape "
                f"{tuple(image.shape)} and dtype {image.dtype}; sample 0 has {tuple(first.shape)}, {first.dtype}"
            )
        if "size" not in target:
            target["size"] = torch.tensor(image.shape[-2:], dtype=torch.int64)
    _share_storage(targets)
    if all(image.shape == first.shape for image in images):
        return torch.stack(images), targets  # [B, C, H, W]
    height = max(image.shape[-2] for image in images)
    width = max(image.shape[-1] for image in images)
    out = first.new_full((len(images), first.shape[0], height, width), pad_value(first.dtype))  # [B, C, H, W]
    for i, image in enumerate(images):
        out[i, :, : image.shape[-2], : image.shape[-1]] = image
    return out, targets


def _share_storage(targets: list[dict]) -> None:
    """Make each target tensor a view into one buffer per key (in place).

    A DataLoader worker sends every tensor storage through shared memory separately; with seven small tensors
    per image that costs more than the image itself for small inputs. One buffer per key cuts it to a handful
    per batch. The targets still hold ordinary tensors of the same shapes and values.
    """
    for key, value in targets[0].items():
        if not isinstance(value, Tensor) or value.ndim == 0:
            continue
        values = [t.get(key) for t in targets]
        if not all(
            isinstance(v, Tensor)
            and v.ndim == value.ndim
            and v.dtype == value.dtype
            and v.shape[1:] == value.shape[1:]
            for v in values
        ):
            continue
        parts = torch.cat(values).split([v.shape[0] for v in values])  # views of one [sum N_i, ...] buffer
        for target, part in zip(targets, parts):
            target[key] = part


def _base_dataset(dataset: Dataset) -> Dataset:
    """The data set under any ``Subset`` / ``Mosaic`` / ``SlicedDataset`` wrappers."""
    while isinstance(dataset, Subset | Mosaic | SlicedDataset):
        dataset = dataset.dataset
    return dataset


class DetectionDataModule(L.LightningDataModule):
    """Train/val/test data for the Lightning trainer, from a spec string or ready data set objects.

    Args:
        data: dataset spec (``synthetic``, ``synthetic:1024``, ``coco:ANN.json:IMAGES``, ``voc:DIR``, ...; see
            ``detforge.data.spec``) or a data set object used for training as given (its own transforms).
        imgsz: network input side; images are letterboxed to ``imgsz x imgsz``.
        batch_size: images per batch (per device under DDP).
        num_workers: DataLoader worker processes (decoding and augmentation off the training thread);
            ``"auto"``: by the usable CPUs (:func:`auto_num_workers`: none on a 2-core machine).
        pin_memory: pin host memory; only takes effect when CUDA is available.
        persistent_workers: keep workers alive between epochs; only when ``num_workers > 0``.
        mosaic: probability of a 4-image mosaic per training sample (0 disables).
        augment: use the training augmentation (flip, photometric, scale jitter); False uses the val pipeline.
        overhead: augmentation for overhead (aerial, satellite, microscope) imagery, where there is no up:
            vertical flips (p 0.5) and random 90-degree rotations on top of the horizontal flips.
        cache: ``"ram"``: decode the images of the training and validation data sets once and keep them in
            memory (:func:`detforge.data.cache.cache_images`) up to ``cache_gb``, for small data sets whose
            decoding costs a fair part of an epoch; a warning says when not all fit. ``"none"``: decode every
            time. Readers of image files only (the synthetic data has its own ``dataset_kwargs`` cache).
        cache_gb: the cache's size limit in GiB (decoded uint8 images, training data first).
        photometric: include the colour jitter (brightness, contrast, saturation, hue, channel shuffle) in the
            training augmentation; it is the costliest step on a CPU.
        scale_jitter: ``(lo, hi)`` random zoom range of the training augmentation; None disables it.
        val_data: spec or data set for validation; None uses ``data``'s ``val`` split (for an object: none).
        test_data: spec or data set for ``trainer.test`` / ``detforge val --split test`` (evaluated like the
            validation data: val pipeline; a spec is read with its ``val`` split); None: no test split.
        train_size: use only the first ``train_size`` training images.
        seed: seeds shuffling and the worker RNGs (torch, numpy, random) so runs repeat.
        dataset_kwargs: extra keyword arguments for the data set classes (e.g. ``{"mode": "L"}``).
        slice: sliced training: train on ``slice x slice`` tiles of the training images, cut on the fly
            (:class:`~detforge.data.sliced.SlicedDataset`), then augmented and letterboxed to ``imgsz`` (set
            ``imgsz`` to the slice to keep the pixels' scale); None trains on whole images. Validation and
            test stay on whole images.
        overlap: overlap ratio of neighbouring tiles, in [0, 1).
        slice_min_area: a box is kept in a tile when at least this fraction of its area is inside it.
        slice_empty_ratio: empty tiles (no kept box) drawn per non-empty tile, anew each epoch.
        multi_scale: multi-scale training: ``(lo, hi)`` factors of ``imgsz``; each training batch (on its
            device) is resized to a size drawn in that range, a multiple of the model's largest stride, the
            same on every DDP rank (:class:`~detforge.data.multi_scale.MultiScale`; a keep-ratio shortest
            edge per image for models with ``keeps_aspect_ratio``). None: off.
        multi_scale_every: draw a new size every this many batches.
        multi_scale_off_epochs: train the last this many epochs at ``imgsz`` (needs ``max_epochs``).
    """

    def __init__(
        self,
        data: str | Dataset = "synthetic",
        imgsz: int = 256,
        batch_size: int = 16,
        num_workers: int | Literal["auto"] = "auto",
        pin_memory: bool = True,
        persistent_workers: bool = True,
        mosaic: float = 0.0,
        augment: bool = True,
        photometric: bool = True,
        scale_jitter: tuple[float, float] | None = (0.5, 1.5),
        val_data: str | Dataset | None = None,
        test_data: str | Dataset | None = None,
        train_size: int | None = None,
        seed: int = 0,
        dataset_kwargs: dict[str, Any] | None = None,
        overhead: bool = False,
        cache: Literal["none", "ram"] = "none",
        cache_gb: float = 4.0,
        slice: int | None = None,
        overlap: float = 0.2,
        slice_min_area: float = 0.5,
        slice_empty_ratio: float = 0.1,
        multi_scale: tuple[float, float] | None = None,
        multi_scale_every: int = 1,
        multi_scale_off_epochs: int = 0,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise InvalidValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_workers == "auto":
            num_workers = auto_num_workers()
        if isinstance(num_workers, str) or num_workers < 0:
            raise InvalidValueError(f"num_workers must be >= 0 or 'auto', got {num_workers!r}")
        if cache not in ("none", "ram"):
            raise InvalidValueError(f"cache must be one of ('none', 'ram'), got {cache!r}")
        if cache_gb < 0:
            raise InvalidValueError(f"cache_gb must be >= 0, got {cache_gb}")
        if not 0.0 <= mosaic <= 1.0:
            raise InvalidValueError(f"mosaic is a probability in [0, 1], got {mosaic}")
        if train_size is not None and train_size < 1:
            raise InvalidValueError(f"train_size must be >= 1, got {train_size}")
        if slice is not None and slice < 8:
            raise InvalidValueError(f"slice must be >= 8 pixels or None, got {slice}")
        if not 0.0 <= overlap < 1.0:
            raise InvalidValueError(f"overlap must be in [0, 1), got {overlap}")
        if not 0.0 < slice_min_area <= 1.0:
            raise InvalidValueError(f"slice_min_area is a fraction in (0, 1], got {slice_min_area}")
        if slice_empty_ratio < 0:
            raise InvalidValueError(f"slice_empty_ratio must be >= 0, got {slice_empty_ratio}")
        self.data = data
        self.imgsz = int(imgsz)
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.pin_memory = bool(pin_memory)
        self.persistent_workers = bool(persistent_workers)
        self.mosaic = float(mosaic)
        self.augment = bool(augment)
        self.photometric = bool(photometric)
        self.scale_jitter = None if scale_jitter is None else (float(scale_jitter[0]), float(scale_jitter[1]))
        self.val_data = val_data
        self.test_data = test_data
        self.train_size = train_size
        self.seed = int(seed)
        self.dataset_kwargs = dict(dataset_kwargs or {})
        self.overhead = bool(overhead)
        self.cache = cache
        self.cache_gb = float(cache_gb)
        self._cache_bytes_left = int(self.cache_gb * 2**30)
        self.slice = None if slice is None else int(slice)
        self.overlap = float(overlap)
        self.slice_min_area = float(slice_min_area)
        self.slice_empty_ratio = float(slice_empty_ratio)
        self.multi_scale = None
        if multi_scale is not None:
            self.multi_scale = MultiScale(
                multi_scale,
                every=multi_scale_every,
                off_epochs=multi_scale_off_epochs,
                seed=seed,
                num_draws=batch_size,
            )
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None
        self.test_dataset: Dataset | None = None

    # ------------------------------------------------------------------ datasets
    def _build(self, spec: str, split: str, transforms) -> Dataset:
        from detforge.data.spec import build_dataset, parse_spec

        kwargs = dict(self.dataset_kwargs)
        if parse_spec(spec)[0] in ("synthetic", "synthetic-thermal", "synthetic-sequence", "synthetic-video"):
            kwargs.setdefault("image_size", self.imgsz)
        return build_dataset(spec, split=split, transforms=transforms, **kwargs)

    def _train_transforms(self):
        if self.augment:
            return build_train_transforms(
                self.imgsz,
                photometric=self.photometric,
                scale_jitter=self.scale_jitter,
                vflip=0.5 if self.overhead else 0.0,
                rotate90=self.overhead,
            )
        return build_val_transforms(self.imgsz)

    def setup(self, stage: str | None = None) -> None:
        """Build the data sets (every process builds its own, so this works under DDP without prepare_data)."""
        if self.train_dataset is None and stage in (None, "fit"):
            self.train_dataset = self._cached(self._make_train(), "training")
        if self.val_dataset is None and stage in (None, "fit", "validate"):
            self.val_dataset = self._cached(self._make_val(), "validation")
        if self.test_dataset is None and stage in (None, "test") and self.test_data is not None:
            self.test_dataset = self._make_eval(self.test_data)

    def _synthetic(self, name: str) -> bool:
        """Whether the ``name`` ("training" / "validation") data is a synthetic spec (rendered, not decoded)."""
        from detforge.data.spec import parse_spec

        source = self.data if name == "training" or self.val_data is None else self.val_data
        return isinstance(source, str) and parse_spec(source)[0].startswith("synthetic")

    def _cached(self, dataset: Dataset | None, name: str) -> Dataset | None:
        """With ``cache="ram"``, fill the decoded-image cache of ``dataset``'s reader from what is left of
        ``cache_gb`` (in this process, before any worker starts, so workers share the decoded pages)."""
        if self.cache != "ram" or dataset is None or self._synthetic(name):
            return dataset
        from detforge.data.cache import cache_images

        base = _base_dataset(dataset)
        if getattr(base, "image_cache", None) is None:
            filled = cache_images(base, self._cache_bytes_left, name)
            if filled is not None:
                self._cache_bytes_left -= filled.nbytes
        return dataset

    def _make_train(self) -> Dataset:
        wrapped = self.mosaic > 0 or self.slice is not None  # the wrappers augment, the data set stays raw
        if isinstance(self.data, str):
            dataset = self._build(self.data, "train", keep_uint8 if wrapped else self._train_transforms())
        else:
            dataset = self.data
        if self.slice is not None:
            dataset = SlicedDataset(
                dataset,
                self.slice,
                overlap=self.overlap,
                min_area=self.slice_min_area,
                empty_ratio=self.slice_empty_ratio,
                transforms=keep_uint8 if self.mosaic > 0 else self._train_transforms(),
            )
        if self.mosaic > 0:
            dataset = Mosaic(dataset, self.imgsz, prob=self.mosaic, transforms=self._train_transforms())
        if self.train_size is not None and self.train_size < len(dataset):
            dataset = Subset(dataset, range(self.train_size))
        if len(dataset) == 0:
            raise DataError(f"training data {self.data!r} has no images")
        return dataset

    def _make_val(self) -> Dataset | None:
        source = self.val_data if self.val_data is not None else self.data
        if not isinstance(source, str):
            return self.val_data  # an object given as ``data`` has no val split of its own
        return self._make_eval(source)

    def _make_eval(self, source: str | Dataset) -> Dataset:
        """An evaluation data set: a spec's ``val`` split with the val pipeline, or an object as given."""
        return self._build(source, "val", build_val_transforms(self.imgsz)) if isinstance(source, str) else source

    @property
    def num_classes(self) -> int:
        """Number of classes of the training data (after ``setup``)."""
        return int(_base_dataset(self._any_dataset()).num_classes)

    @property
    def class_names(self) -> list[str]:
        """Class names of the training data (after ``setup``)."""
        return list(_base_dataset(self._any_dataset()).class_names)

    def _any_dataset(self) -> Dataset:
        dataset = next((d for d in (self.train_dataset, self.val_dataset, self.test_dataset) if d is not None), None)
        if dataset is None:
            raise RuntimeError("DetectionDataModule: call setup() before reading num_classes / class_names")
        return dataset

    # ------------------------------------------------------------------ loaders
    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        workers = self.num_workers
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=workers,
            collate_fn=detection_collate,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.persistent_workers and workers > 0,
            worker_init_fn=pl_worker_init_function if workers > 0 else None,
            generator=torch.Generator().manual_seed(self.seed),
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        if self.train_dataset is None:
            self.setup("fit")
        return self._loader(self.train_dataset, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_dataset is None:
            self.setup("validate")
        if self.val_dataset is None:
            return []
        return self._loader(self.val_dataset, shuffle=False)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Multi-scale training: resize a training batch (on its device) to this step's size; other batches
        (validation, test, predict) and the last ``multi_scale_off_epochs`` epochs pass unchanged."""
        trainer = self.trainer
        if self.multi_scale is None or trainer is None or not trainer.training:
            return batch
        if not self.multi_scale.active(trainer.current_epoch, trainer.max_epochs):
            return batch
        model = getattr(trainer.lightning_module, "model", trainer.lightning_module)
        mode = "keep_ratio" if getattr(model, "keeps_aspect_ratio", False) else "fixed"
        images, targets = batch
        return self.multi_scale(images, targets, model_stride(model), mode)

    def test_dataloader(self) -> DataLoader:
        if self.test_data is None:
            raise ValueError(
                "DetectionDataModule has no test split: give test_data= (a spec or a data set; "
                "`detforge train --data.test_data SPEC`)"
            )
        if self.test_dataset is None:
            self.setup("test")
        return self._loader(self.test_dataset, shuffle=False)
