"""Box-aware train and val pipelines on torchvision.transforms.v2.

``build_train_transforms(imgsz)`` and ``build_val_transforms(imgsz)`` return callables with the readers'
contract: ``transform(image, target) -> (image, target)`` where ``image`` is uint8 (or float in [0, 1])
``Tensor[C, H, W]`` and ``target`` holds ``boxes`` (float32 [N, 4] xyxy pixels) and per-box tensors. Inside,
the boxes travel as ``tv_tensors.BoundingBoxes`` so every geometric op moves them; the image stays uint8 until
the last step (much faster), and ``SanitizeBoundingBoxes`` drops degenerate boxes together with every per-box
entry (``labels``, ``iscrowd``, ``ignore``, ``area``, ``track_ids``). The output image is float32 in [0, 1]
(``[C, imgsz, imgsz]`` when letterboxed) and ``target["size"]`` is its (h, w).

Letterbox = keep-ratio resize of the longer side to ``imgsz``, then pad bottom/right to ``imgsz x imgsz``
with grey :data:`PAD_VALUE` (114 on uint8, 114 / 255 in [0, 1] floats; :func:`pad_value`); boxes stay in pixels of the padded image, whose top-left is the original's top-left, so
predictions map back with one scale factor (``orig_size / unpadded size``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

__all__ = [
    "PAD_VALUE",
    "PER_BOX_KEYS",
    "DetectionTransform",
    "PadBottomRight",
    "RandomRotate90",
    "RecordSize",
    "as_detection_transform",
    "build_train_transforms",
    "build_val_transforms",
    "pad_value",
]

#: Target entries with one value per box; they are filtered together with the boxes.
PER_BOX_KEYS = ("labels", "iscrowd", "ignore", "area", "track_ids", "scores")
#: The one padding grey of detforge, on the uint8 scale: letterbox, scale-jitter canvas, mosaic canvas and
#: batch collation all pad with it (114 / 255 in float images in [0, 1]; see :func:`pad_value`).
PAD_VALUE = 114
_ROW = "_row"  # private target key: input row of each box, to rescale areas after sanitising
_CONTENT_SIZE = "_content_size"  # private target key written by RecordSize


def pad_value(dtype: torch.dtype) -> float:
    """:data:`PAD_VALUE` in an image of ``dtype``: 114 for integer (uint8) images, 114 / 255 for float images
    in [0, 1], computed as ``ToDtype(scale=True)`` converts a uint8 114 (so a float image padded with it and
    a uint8 image padded with 114 then converted are bitwise equal)."""
    if not dtype.is_floating_point:
        return float(PAD_VALUE)
    return float(TF.to_dtype(torch.tensor(PAD_VALUE, dtype=torch.uint8), dtype, scale=True))


class PadBottomRight(v2.Transform):
    """Pad the image (and canvas of the boxes) on the bottom and right up to ``size=(h, w)``; never crops.

    ``fill=None`` pads with :data:`PAD_VALUE` in the image's scale (:func:`pad_value`), so uint8 and float
    inputs get the same grey.
    """

    def __init__(self, size: int | Sequence[int], fill: float | None = None) -> None:
        super().__init__()
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.fill = fill

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        return {"padding": [0, 0, max(self.size[1] - width, 0), max(self.size[0] - height, 0)]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not any(params["padding"]):
            return inpt
        fill = pad_value(inpt.dtype) if self.fill is None else self.fill
        return self._call_kernel(TF.pad, inpt, padding=params["padding"], fill=fill)


class RandomRotate90(v2.Transform):
    """Rotate the image by a random multiple of 90 degrees (counter-clockwise, each of 0, 90, 180, 270 equally
    likely), its boxes with it, exactly (``torch.rot90``, no interpolation). For overhead imagery, where
    there is no up."""

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"k": int(torch.randint(4, ()))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        k = params["k"]
        if k == 0:
            return inpt
        if isinstance(inpt, tv_tensors.BoundingBoxes):
            return _rot90_boxes(inpt, k)
        if isinstance(inpt, Tensor) and inpt.ndim >= 2:
            return tv_tensors.wrap(torch.rot90(inpt, k, dims=(-2, -1)), like=inpt)
        return inpt


def _rot90_boxes(boxes: tv_tensors.BoundingBoxes, k: int) -> tv_tensors.BoundingBoxes:
    """Boxes of a ``k`` times 90-degree counter-clockwise ``torch.rot90``: (x, y) -> (y, W - x) per turn."""
    xyxy = TF.convert_bounding_box_format(boxes, new_format=tv_tensors.BoundingBoxFormat.XYXY).as_subclass(Tensor)
    h, w = boxes.canvas_size
    for _ in range(k):
        x1, y1, x2, y2 = xyxy.unbind(-1)
        xyxy = torch.stack([y1, w - x2, y2, w - x1], dim=-1)  # [N, 4]
        h, w = w, h
    out = tv_tensors.BoundingBoxes(xyxy, format=tv_tensors.BoundingBoxFormat.XYXY, canvas_size=(h, w))
    return TF.convert_bounding_box_format(out, new_format=boxes.format)


class RecordSize(v2.Transform):
    """Remember the current image size as the sample's unpadded ``size`` (use it right before padding)."""

    def forward(self, *inputs: Any) -> Any:
        sample = inputs if len(inputs) > 1 else inputs[0]
        image, target = sample
        target[_CONTENT_SIZE] = tuple(image.shape[-2:])
        return sample


def _sanitize_entries(sample: Any) -> tuple[Tensor, ...]:
    """``SanitizeBoundingBoxes`` labels_getter: every per-box tensor of the target, plus our row index."""
    target = sample[1]
    return tuple(target[k] for k in (*PER_BOX_KEYS, _ROW) if isinstance(target.get(k), Tensor))


class DetectionTransform:
    """Run a v2 pipeline on ``(image, target)`` and return plain tensors in detforge's sample format.

    Args:
        pipeline: v2 transforms applied to ``(tv_tensors.Image, target with tv_tensors.BoundingBoxes)``;
            it should end with ``SanitizeBoundingBoxes(labels_getter=...)`` and ``ToDtype(scale=True)`` as
            the builders below do.

    Each surviving object's ``area`` is scaled by how much its box area changed. ``target["size"]`` becomes
    the unpadded (h, w) when the pipeline has a :class:`RecordSize` step, else the output image's (h, w).
    """

    def __init__(self, pipeline: v2.Transform) -> None:
        self.pipeline = pipeline

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.pipeline})"

    def __call__(self, image: Tensor, target: dict) -> tuple[Tensor, dict]:
        """``image``: Tensor[C, H, W] uint8 or float in [0, 1]; ``target["boxes"]``: Tensor[N, 4] xyxy pixels."""
        height, width = image.shape[-2:]
        target = dict(target)
        boxes = torch.as_tensor(target.get("boxes", torch.zeros(0, 4)), dtype=torch.float32).reshape(-1, 4)
        n = boxes.shape[0]
        for key in PER_BOX_KEYS:
            value = target.get(key)
            if isinstance(value, Tensor) and value.shape[:1] != (n,):
                raise ValueError(
                    f"target of image_id={target.get('image_id')!r}: {key!r} has shape {tuple(value.shape)} "
                    f"but there are {n} boxes"
                )
        target["boxes"] = tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(height, width))
        if image.dtype == torch.uint8 and image.shape[0] == 3 and image.is_contiguous():
            # Same [C, H, W] tensor over channels-last memory: v2's uint8 resize runs ~3x faster on it.
            image = image.permute(1, 2, 0).contiguous().permute(2, 0, 1)
        has_area = isinstance(target.get("area"), Tensor)
        if has_area:
            target[_ROW] = torch.arange(n)
        out_image, target = self.pipeline(tv_tensors.Image(image), target)
        new_boxes = target["boxes"].as_subclass(Tensor)  # [N', 4]
        if has_area:
            before = _box_area(boxes)[target.pop(_ROW)]  # [N'] box areas of the surviving objects
            target["area"] = target["area"] * (_box_area(new_boxes) / before.clamp(min=1e-6))
        target["boxes"] = new_boxes
        out_image = out_image.as_subclass(Tensor).contiguous()  # [C, H', W']
        size = target.pop(_CONTENT_SIZE, None) or tuple(out_image.shape[-2:])
        target["size"] = torch.tensor(size, dtype=torch.int64)
        return out_image, target


def _box_area(boxes: Tensor) -> Tensor:
    """Areas of xyxy ``boxes`` (Tensor[N, 4]) -> Tensor[N]."""
    return (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)


def as_detection_transform(transforms: Any) -> Any:
    """A data set's ``transforms`` argument, with a raw torchvision v2 pipeline (a ``v2.Transform`` such as
    ``v2.Compose([v2.RandomHorizontalFlip(1)])``) wrapped in :class:`DetectionTransform` so its geometric ops
    move the boxes too (``BoundingBoxes`` with the image's canvas size, back to plain tensors), then clamped,
    degenerate boxes dropped with their per-box entries, and the image made float32 in [0, 1]. Any other
    callable (detforge's builders, a ``DetectionTransform``, your own function) is returned unchanged."""
    if isinstance(transforms, v2.Transform):
        return DetectionTransform(v2.Compose([transforms, *_finish(False, (), ())]))
    return transforms


def _finish(normalize: bool, mean: Sequence[float], std: Sequence[float]) -> list[v2.Transform]:
    steps: list[v2.Transform] = [
        v2.ClampBoundingBoxes(),
        v2.SanitizeBoundingBoxes(min_size=1.0, labels_getter=_sanitize_entries),
        v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
    ]
    if normalize:
        steps.append(v2.Normalize(mean=list(mean), std=list(std)))
    return steps


def build_train_transforms(
    imgsz: int,
    *,
    letterbox: bool = True,
    hflip: float = 0.5,
    vflip: float = 0.0,
    rotate90: bool = False,
    photometric: bool = True,
    scale_jitter: tuple[float, float] | None = (0.5, 1.5),
    iou_crop: float = 0.0,
    normalize: bool = False,
    mean: Sequence[float] = (0.485, 0.456, 0.406),
    std: Sequence[float] = (0.229, 0.224, 0.225),
) -> DetectionTransform:
    """Training augmentation ending in a float32 ``[C, imgsz, imgsz]`` image in [0, 1].

    Args:
        imgsz: output side in pixels.
        letterbox: keep the aspect ratio (fit the longer side, pad with grey); False stretches to a square.
        hflip: probability of a horizontal flip.
        vflip: probability of a vertical flip (overhead imagery).
        rotate90: rotate by a random multiple of 90 degrees (:class:`RandomRotate90`; overhead imagery).
        photometric: SSD-style brightness/contrast/saturation/hue jitter and channel shuffle (grey images
            get brightness and contrast only).
        scale_jitter: ``(lo, hi)`` range of the random zoom relative to the fitted size; a zoomed-in image is
            randomly cropped, a zoomed-out one placed at a random offset on the grey canvas. None disables.
        iou_crop: probability of an SSD random IoU crop before resizing.
        normalize: subtract ``mean`` and divide by ``std`` after scaling to [0, 1] (off by default).
    """
    if imgsz < 8:
        raise ValueError(f"imgsz must be >= 8, got {imgsz}")
    if not all(0.0 <= p <= 1.0 for p in (hflip, vflip, iou_crop)):
        raise ValueError(f"hflip, vflip and iou_crop are probabilities in [0, 1], got {hflip}, {vflip}, {iou_crop}")
    if scale_jitter is not None and not 0 < scale_jitter[0] <= scale_jitter[1]:
        raise ValueError(f"scale_jitter must be (lo, hi) with 0 < lo <= hi, got {scale_jitter}")
    steps: list[v2.Transform] = []
    if iou_crop > 0:
        steps.append(v2.RandomApply([v2.RandomIoUCrop()], p=iou_crop))
    if rotate90:  # before the resize, so a rotated non-square image is letterboxed like any other
        steps.append(RandomRotate90())
    if not letterbox:
        steps.append(v2.Resize((imgsz, imgsz), antialias=True))
    if scale_jitter is not None:
        steps += [
            v2.ScaleJitter((imgsz, imgsz), scale_range=tuple(scale_jitter), antialias=True),
            v2.RandomCrop(imgsz, pad_if_needed=True, fill=PAD_VALUE),
        ]
    elif letterbox:
        steps += [v2.Resize(None, max_size=imgsz, antialias=True), RecordSize(), PadBottomRight(imgsz)]
    if hflip > 0:
        steps.append(v2.RandomHorizontalFlip(p=hflip))
    if vflip > 0:
        steps.append(v2.RandomVerticalFlip(p=vflip))
    if photometric:
        steps.append(v2.RandomPhotometricDistort(p=0.5))
    return DetectionTransform(v2.Compose(steps + _finish(normalize, mean, std)))


def build_val_transforms(
    imgsz: int,
    *,
    letterbox: bool = True,
    normalize: bool = False,
    mean: Sequence[float] = (0.485, 0.456, 0.406),
    std: Sequence[float] = (0.229, 0.224, 0.225),
) -> DetectionTransform:
    """Deterministic resize to ``imgsz`` (letterbox: fit the longer side and pad bottom/right; else stretch)."""
    if imgsz < 8:
        raise ValueError(f"imgsz must be >= 8, got {imgsz}")
    if letterbox:
        steps = [v2.Resize(None, max_size=imgsz, antialias=True), RecordSize(), PadBottomRight(imgsz)]
    else:
        steps = [v2.Resize((imgsz, imgsz), antialias=True)]
    return DetectionTransform(v2.Compose(steps + _finish(normalize, mean, std)))
