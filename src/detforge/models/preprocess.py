"""How a model turns a user's images into its input batch, and its detections back into their pixels.

:class:`Preprocess` is the part of a model's metadata that :meth:`detforge.models.base.Detector.predict`
follows: resize each image (torchvision's ``GeneralizedRCNNTransform`` rules, or a letterbox), pad the batch
bottom / right to a multiple of ``size_divisible`` with the model's mean colour, run the model, and scale the
boxes back to each image's own pixels.

Padding with the mean colour is what makes a detforge model that normalises inside its ``forward`` see the
same batch as torchvision's transform, which normalises first and pads with zeros: ``(mean - mean) / std`` is
exactly zero. Resizing before normalising equals normalising before resizing up to float rounding (bilinear
weights sum to one).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["Preprocess", "ResizeMode", "batch_images", "resize_image", "scale_boxes_back"]

ResizeMode = Literal["shortest_edge", "fixed", "letterbox"]
"""``shortest_edge``: torchvision's detection resize (shorter side to ``min_size``, longer side at most
``max_size``, one scale factor, bilinear); ``fixed``: both sides to ``fixed_size`` (h, w) (SSD); ``letterbox``:
the longer side to ``max_size`` keeping the aspect ratio, antialiased (detforge's own validation transform)."""


@dataclass(frozen=True, kw_only=True)
class Preprocess:
    """A model's input pre-processing (timm's ``pretrained_cfg`` input fields; torchvision's transform).

    Attributes:
        resize: see :data:`ResizeMode`.
        min_size: ``shortest_edge``: target of the shorter side (torchvision's ``min_size``).
        max_size: ``shortest_edge``: cap of the longer side; ``letterbox``: the longer side.
        fixed_size: ``fixed``: (h, w).
        size_divisible: the padded batch's sides are multiples of this.
        mean, std: the statistics the model normalises with inside ``forward`` (per channel, images in [0, 1]).
        pad_value: "mean" (the mean colour, which normalises to zero: torchvision's padding) or "zero" (black:
            detforge's letterbox, what models trained with ``detforge train`` saw).
    """

    resize: ResizeMode = "letterbox"
    min_size: int = 800
    max_size: int = 1333
    fixed_size: tuple[int, int] | None = None
    size_divisible: int = 32
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    pad_value: Literal["mean", "zero"] = "mean"

    def __post_init__(self) -> None:
        if self.resize not in get_args(ResizeMode):
            raise ValueError(f"resize must be one of {get_args(ResizeMode)}, got {self.resize!r}")
        if self.pad_value not in ("mean", "zero"):
            raise ValueError(f"pad_value must be 'mean' or 'zero', got {self.pad_value!r}")
        if self.resize == "fixed" and self.fixed_size is None:
            raise ValueError("resize='fixed' needs fixed_size=(h, w)")
        if self.min_size < 1 or self.max_size < 1 or self.size_divisible < 1:
            raise ValueError(
                f"min_size, max_size and size_divisible must be >= 1, got {self.min_size}, {self.max_size}, "
                f"{self.size_divisible}"
            )


def resize_image(image: Tensor, preprocess: Preprocess) -> Tensor:
    """``image`` (Tensor[C, H, W] float) resized as ``preprocess`` says -> Tensor[C, H', W']."""
    h, w = image.shape[-2:]
    if preprocess.resize == "fixed":
        fh, fw = preprocess.fixed_size  # type: ignore[misc]
        return F.interpolate(image[None], size=[fh, fw], mode="bilinear", align_corners=False)[0]
    if preprocess.resize == "shortest_edge":  # torchvision's GeneralizedRCNNTransform, call for call
        scale = min(preprocess.min_size / min(h, w), preprocess.max_size / max(h, w))
        return F.interpolate(
            image[None], scale_factor=scale, mode="bilinear", recompute_scale_factor=True, align_corners=False
        )[0]
    from torchvision.transforms.v2 import functional as TF

    # detforge's validation transform (build_val_transforms): the longer side to max_size, antialiased
    return TF.resize(image, size=None, max_size=preprocess.max_size, antialias=True)


def batch_images(images: Sequence[Tensor], preprocess: Preprocess) -> Tensor:
    """Images (Tensor[C, H_i, W_i]) in one batch Tensor[B, C, H, W], top-left aligned, sides rounded up to
    ``size_divisible``, the rest filled with the mean colour."""
    c = images[0].shape[0]
    h = max(int(im.shape[-2]) for im in images)
    w = max(int(im.shape[-1]) for im in images)
    step = preprocess.size_divisible
    h, w = int(math.ceil(h / step) * step), int(math.ceil(w / step) * step)
    mean = torch.tensor(preprocess.mean, dtype=images[0].dtype, device=images[0].device)
    if preprocess.pad_value == "zero":
        mean = torch.zeros_like(mean)
    if mean.numel() != c:
        mean = mean.mean().expand(c)
    batch = mean.reshape(1, c, 1, 1).repeat(len(images), 1, h, w)  # [B, C, H, W]
    for i, image in enumerate(images):
        batch[i, :, : image.shape[-2], : image.shape[-1]].copy_(image)
    return batch


def scale_boxes_back(boxes: Tensor, size: tuple[int, int], original: tuple[int, int]) -> Tensor:
    """xyxy ``boxes`` (Tensor[K, 4]) in pixels of an image resized to ``size`` (h, w), in pixels of its
    ``original`` (h, w): torchvision's ``resize_boxes`` (float32 ratios, one per axis)."""
    ratio_h = torch.tensor(original[0], dtype=torch.float32) / torch.tensor(size[0], dtype=torch.float32)
    ratio_w = torch.tensor(original[1], dtype=torch.float32) / torch.tensor(size[1], dtype=torch.float32)
    scale = torch.stack([ratio_w, ratio_h, ratio_w, ratio_h]).to(boxes.device, boxes.dtype)  # [4]
    return boxes * scale  # [K, 4]
