"""What the training labels look like: class counts, box centres, box sizes at the input size, objects per image.

:func:`label_statistics` reads the boxes of a data set (from the parsed annotations, without decoding any image,
for the file readers; by rendering without augmentation for the synthetic sets; item by item otherwise) and
counts them as the dataset doctor (:mod:`detforge.data.doctor`) does: every annotated box, crowd and ignored
ones included, on the same evenly spaced sample of images. ``labels.png`` in a run folder is its picture
(:func:`detforge.data.label_plots.plot_label_statistics`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

from detforge.data.base import DetectionDataset
from detforge.data.doctor import DEFAULT_GENERATED_SAMPLES, _indices
from detforge.data.mosaic import Mosaic
from detforge.data.sliced import SlicedDataset

__all__ = ["DEFAULT_MAX_IMAGES", "LabelStatistics", "label_statistics"]

#: File readers are counted on at most this many evenly spaced images (reading the annotations only, this takes
#: well under a second); generated data sets on the doctor's ``DEFAULT_GENERATED_SAMPLES`` (each is rendered).
DEFAULT_MAX_IMAGES = 10_000


@dataclass
class LabelStatistics:
    """The boxes of a sample of a data set's images.

    Attributes:
        class_names: one name per label index.
        labels: ``[N]`` int64, the class of every box.
        centres: ``[N, 2]`` float32 box centres ``(x, y)`` divided by their image's ``(w, h)`` (0 is left / top).
        sizes: ``[N, 2]`` float32 box ``(w, h)`` in pixels at the input size (each image letterboxed: its longer
            side scaled to ``imgsz``); in the images' own pixels when ``imgsz`` is None.
        objects_per_image: ``[M]`` int64 boxes in each sampled image.
        crowd_or_ignored: how many of the ``N`` boxes are crowd regions or ignored objects.
        num_images: images in the data set (``M`` of them were counted).
        imgsz: the input size the sizes are at (None: the images' own).
    """

    class_names: list[str]
    labels: Tensor
    centres: Tensor
    sizes: Tensor
    objects_per_image: Tensor
    crowd_or_ignored: int
    num_images: int
    imgsz: int | None

    @property
    def images_counted(self) -> int:
        return int(self.objects_per_image.shape[0])

    @property
    def num_boxes(self) -> int:
        return int(self.labels.shape[0])

    @property
    def per_class(self) -> Tensor:
        """``[C]`` int64 boxes per class (labels outside ``[0, C)`` are not counted, as in the doctor)."""
        c = len(self.class_names)
        valid = self.labels[(self.labels >= 0) & (self.labels < c)]
        return torch.bincount(valid, minlength=c)


def _base_and_indices(dataset: Dataset) -> tuple[Dataset, list[int] | None]:
    """The data set under ``Subset`` / ``Mosaic`` / ``SlicedDataset`` wrappers and which of its images the
    wrapped data set shows (None: all). A ``Subset`` keeps its indices; a mosaic item ``i`` is built around
    image ``i``; the tiles of a sliced data set come from all its images."""
    indices: list[int] | None = None
    while isinstance(dataset, Subset | Mosaic | SlicedDataset):
        if isinstance(dataset, Subset):
            inner = [int(i) for i in dataset.indices]
            indices = inner if indices is None else [inner[i] for i in indices]
        elif isinstance(dataset, SlicedDataset):
            indices = None
        dataset = dataset.dataset
    return dataset, indices


def _class_names(dataset: Dataset) -> list[str]:
    """As the doctor names the classes: ``class_names``, else ``num_classes`` numbers, else none."""
    names = list(getattr(dataset, "class_names", None) or [])
    if not names and hasattr(dataset, "num_classes"):
        names = [str(i) for i in range(int(dataset.num_classes))]
    return [str(n) for n in names]


def _annotation_boxes(dataset: DetectionDataset, picked: Tensor) -> tuple[Tensor, ...]:
    """Boxes of images ``picked`` (``[M]`` int64) of a file reader, from its packed annotations (no decoding).

    Returns boxes ``[N, 4]`` xyxy pixels of the images ``dataset[i]`` returns (after its ``imgsz`` stretch),
    labels ``[N]``, crowd-or-ignored ``[N]`` bool, the image (position in ``picked``) of each box ``[N]`` and
    the images' ``(h, w)`` ``[M, 2]``.
    """
    from detforge.io import image_size

    offsets = torch.as_tensor(dataset._offsets, dtype=torch.int64)  # [I + 1]
    lo, hi = offsets[picked], offsets[picked + 1]  # [M]
    counts = hi - lo  # [M]
    owner = torch.repeat_interleave(torch.arange(len(picked)), counts)  # [N]
    starts = torch.cumsum(counts, 0) - counts  # [M] first box of each image in the output
    rows = lo[owner] + torch.arange(int(counts.sum())) - starts[owner]  # [N] rows of the packed tensors
    boxes = dataset._boxes[rows].float()  # [N, 4] pixels of the file
    hw = []
    for i in picked.tolist():
        h, w = dataset._sizes[i]
        hw.append(image_size(dataset._paths[i]) if h is None or w is None else (h, w))  # header only
    sizes = torch.tensor(hw, dtype=torch.float32).reshape(-1, 2)  # [M, 2] (h, w) of the files
    if dataset.imgsz is not None:  # dataset[i] stretches every image to imgsz, its boxes with it
        target = torch.tensor(dataset.imgsz, dtype=torch.float32)  # [2] (h, w)
        sy, sx = (target / sizes.clamp(min=1)).unbind(1)  # [M] each
        boxes = boxes * torch.stack([sx, sy, sx, sy], 1)[owner]
        sizes = target.expand(len(picked), 2).clone()
    special = dataset._iscrowd[rows] | dataset._ignore[rows]  # [N]
    return boxes, dataset._labels[rows], special, owner, sizes


def _sample_boxes(dataset: Dataset, picked: list[int]) -> tuple[Tensor, ...]:
    """As :func:`_annotation_boxes` for any data set: each sample's target (the synthetic sets render without
    augmentation and stretch to their ``imgsz``; others go through their own transforms)."""
    render = getattr(dataset, "_cached_render", None) or getattr(dataset, "render", None)
    stretch = getattr(dataset, "imgsz", None) if render is not None else None
    boxes, labels, special, owner, sizes = [], [], [], [], []
    for pos, i in enumerate(picked):
        image, target = render(i) if render is not None else dataset[i]
        size = target.get("size")
        h, w = (int(v) for v in size) if size is not None else (int(image.shape[-2]), int(image.shape[-1]))
        b = torch.as_tensor(target["boxes"], dtype=torch.float32).reshape(-1, 4)  # [n, 4]
        if stretch is not None and tuple(stretch) != (h, w):  # as the data set's __getitem__ resizes
            th, tw = stretch
            b = b * torch.tensor([tw / w, th / h, tw / w, th / h])
            h, w = th, tw
        n = b.shape[0]
        flag = torch.zeros(n, dtype=torch.bool)
        for key in ("iscrowd", "ignore"):
            if target.get(key) is not None:
                flag |= torch.as_tensor(target[key]).reshape(-1).bool()
        boxes.append(b)
        labels.append(torch.as_tensor(target["labels"], dtype=torch.int64).reshape(-1))
        special.append(flag)
        owner.append(torch.full((n,), pos, dtype=torch.int64))
        sizes.append((h, w))
    return (
        torch.cat(boxes) if boxes else torch.zeros(0, 4),
        torch.cat(labels) if labels else torch.zeros(0, dtype=torch.int64),
        torch.cat(special) if special else torch.zeros(0, dtype=torch.bool),
        torch.cat(owner) if owner else torch.zeros(0, dtype=torch.int64),
        torch.tensor(sizes, dtype=torch.float32).reshape(-1, 2),
    )


def label_statistics(dataset: Dataset, imgsz: int | None, max_images: int | None = None) -> LabelStatistics:
    """Count the boxes of ``dataset`` (see :class:`LabelStatistics`).

    Args:
        dataset: a file reader (:class:`DetectionDataset`), a synthetic set or any data set of ``(image,
            target)`` samples, possibly wrapped in ``Subset`` / ``Mosaic`` / ``SlicedDataset`` (the annotated
            images under the wrappers are counted, before any augmentation).
        imgsz: the network input side; box sizes are given at it (each image's longer side scaled to it, as
            the letterboxing pipeline does). None: in the images' own pixels.
        max_images: count only this many evenly spaced images (the doctor's sample). None:
            ``DEFAULT_MAX_IMAGES`` for file readers, ``DEFAULT_GENERATED_SAMPLES`` for other data sets;
            0: all.

    Raises:
        ValueError: ``imgsz`` or ``max_images`` is negative.
    """
    if imgsz is not None and imgsz <= 0:
        raise ValueError(f"imgsz must be > 0 or None, got {imgsz}")
    if max_images is not None and max_images < 0:
        raise ValueError(f"max_images must be >= 0 or None, got {max_images}")
    base, shown = _base_and_indices(dataset)
    images = shown if shown is not None else list(range(len(base)))
    files = isinstance(base, DetectionDataset)
    default = DEFAULT_MAX_IMAGES if files else DEFAULT_GENERATED_SAMPLES
    limit = max_images if max_images is not None else default
    picked = [images[k] for k in _indices(len(images), limit)]
    if files:
        boxes, labels, special, owner, hw = _annotation_boxes(base, torch.tensor(picked, dtype=torch.int64))
    else:
        boxes, labels, special, owner, hw = _sample_boxes(base, picked)
    wh = hw.flip(1)[owner]  # [N, 2] (w, h) of each box's image
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2 / wh.clamp(min=1)  # [N, 2]
    sizes = boxes[:, 2:] - boxes[:, :2]  # [N, 2] pixels of the image
    if imgsz is not None:
        sizes = sizes * (imgsz / wh.max(1).values.clamp(min=1))[:, None]  # letterboxed: longer side -> imgsz
    return LabelStatistics(
        class_names=_class_names(base),
        labels=labels,
        centres=centres.float(),
        sizes=sizes.float(),
        objects_per_image=torch.bincount(owner, minlength=len(picked)),
        crowd_or_ignored=int(special.sum()),
        num_images=len(images),
        imgsz=imgsz,
    )
