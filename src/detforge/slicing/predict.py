"""Sliced inference for any detector: cut each image into overlapping tiles, run the tiles as batches, map the
boxes back, optionally add a whole-image pass, and merge the duplicates cut at tile borders.

Tiles are :func:`detforge.slicing.tile_windows` (SAHI's geometry). They run at the image's own resolution,
never resized (that is the point: a 10 px object stays 10 px); every tile has the slice size except along an
axis where the image is smaller than the slice, and such tiles are padded bottom / right with detforge's grey
(:func:`detforge.data.transforms.pad_value`) to the slice size, with their real size passed as the image size
so boxes are clipped to it (SAHI hands such a tile to the model unpadded). The optional whole-image pass
letterboxes the image to ``full_image_size`` (longer side; aspect kept, padded bottom / right) for the large
objects the tiles cut. Then :func:`detforge.slicing.merge.merge_detections` per image and class.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from detforge.models.base import forward_with_sizes
from detforge.slicing.merge import MatchMetric, MergeMethod, merge_detections
from detforge.slicing.tiles import pair, tile_windows

__all__ = ["Predictor", "add_slicing_arguments", "as_predictor", "sliced_predict", "slicing_options"]

Predictor = Callable[[Tensor, list[tuple[int, int]]], list[dict[str, Tensor]]]
"""``predict(images Tensor[B, C, H, W] in [0, 1], image_sizes [(h, w)] unpadded) -> [dict(boxes, scores,
labels)]`` in the pixels of ``images``: what ``ObjectDetector.predict`` and ``Detector.postprocess`` after the
forward give."""


def as_predictor(model: Any) -> Predictor:
    """A :data:`Predictor` from an ``ObjectDetector`` (its ``predict``), a ``Detector`` (forward then
    ``postprocess``) or a callable that already is one."""
    if hasattr(model, "predict") and hasattr(model, "model"):
        return model.predict
    if hasattr(model, "postprocess") and callable(model):

        @torch.no_grad()
        def predict(images: Tensor, sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
            return model.postprocess(forward_with_sizes(model, images, sizes), sizes)

        return predict
    if callable(model):
        return model
    raise TypeError(f"sliced_predict needs a detector or a predict callable, got {type(model).__name__}")


def _letterbox(image: Tensor, size: int) -> tuple[Tensor, tuple[int, int]]:
    """``image`` (Tensor[C, H, W]) resized so its longer side is ``size`` and padded to size x size; returns
    it and the resized (h, w)."""
    from detforge.data.transforms import pad_value

    h, w = image.shape[-2:]
    scale = size / max(h, w)
    rh, rw = max(1, round(h * scale)), max(1, round(w * scale))
    resized = F.interpolate(image[None], size=(rh, rw), mode="bilinear", antialias=True, align_corners=False)[0]
    padded = F.pad(resized, (0, size - rw, 0, size - rh), value=pad_value(image.dtype))
    return padded, (rh, rw)


def _run_in_batches(
    predictor: Predictor, images: list[Tensor], sizes: list[tuple[int, int]], batch_size: int
) -> list[dict[str, Tensor]]:
    """``predictor`` over ``images`` (same shape each) in chunks of ``batch_size``."""
    out: list[dict[str, Tensor]] = []
    for start in range(0, len(images), batch_size):
        chunk = torch.stack(images[start : start + batch_size])  # [b, C, sh, sw]
        out += predictor(chunk, sizes[start : start + batch_size])
    return out


@torch.no_grad()
def sliced_predict(
    model: Any,
    images: Tensor | Sequence[Tensor],
    slice_size: int | Sequence[int] = 512,
    overlap: float = 0.2,
    batch_size: int = 8,
    full_image_pass: bool = False,
    full_image_size: int | None = None,
    merge: MergeMethod = "nms",
    match_metric: MatchMetric = "ios",
    match_thresh: float = 0.5,
    max_detections: int | None = None,
) -> list[dict[str, Tensor]]:
    """Detections of whole images from overlapping tiles run as batches (see the module doc).

    Args:
        model: an ``ObjectDetector``, a ``Detector`` or a :data:`Predictor` callable (:func:`as_predictor`);
            its own post-processing settings (score threshold, NMS, detections per tile) apply per tile.
        images: one Tensor[C, H, W] or a batch Tensor[B, C, H, W] or a list of Tensor[C, H_i, W_i], float in
            [0, 1]; sizes may differ.
        slice_size: tile size, int or (h, w) (a multiple of the model's largest stride is best).
        overlap: overlap ratio of neighbouring tiles in [0, 1).
        batch_size: tiles per forward; the tiles of all images are batched together, so the model runs
            ``ceil(total tiles / batch_size)`` times (plus ``ceil(images / batch_size)`` whole-image passes).
        full_image_pass: also run each image letterboxed to ``full_image_size`` (default: the model's
            ``default_input_size`` longer side, else the slice's) and merge those detections in.
        merge, match_metric, match_thresh: the merge of duplicates (:func:`merge_detections`): "nms" or
            "nmm" (union box), on "iou" or "ios", matching above ``match_thresh``; class-aware.
        max_detections: keep at most this many per image after the merge (None: all).

    Returns:
        one dict per image: ``boxes`` (Tensor[K, 4] xyxy pixels of the image), ``scores`` (Tensor[K]),
        ``labels`` (Tensor[K] int64), best first.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    predictor = as_predictor(model)
    image_list = [images] if isinstance(images, Tensor) and images.ndim == 3 else list(images)
    sh, sw = pair(slice_size)
    tiles: list[Tensor] = []
    tile_sizes: list[tuple[int, int]] = []
    tile_image: list[int] = []
    offsets: list[Tensor] = []
    for i, image in enumerate(image_list):
        h, w = image.shape[-2:]
        windows = tile_windows(h, w, (sh, sw), overlap)  # [T, 4]
        for x0, y0, x1, y1 in windows.tolist():
            crop = image[:, y0:y1, x0:x1]
            if crop.shape[-2:] != (sh, sw):  # the image is smaller than the slice along an axis
                crop = F.pad(crop, (0, sw - crop.shape[-1], 0, sh - crop.shape[-2]), value=_pad(image))
            tiles.append(crop)
            tile_sizes.append((y1 - y0, x1 - x0))
            tile_image.append(i)
        offsets.append(windows[:, :2].repeat(1, 2))  # [T, 4] (x0, y0, x0, y0)
    found = _run_in_batches(predictor, tiles, tile_sizes, batch_size)
    shift = torch.cat(offsets)  # [T_all, 4]
    parts = [
        {**d, "boxes": d["boxes"] + shift[t].to(d["boxes"].device, d["boxes"].dtype), "image": tile_image[t]}
        for t, d in enumerate(found)
    ]
    if full_image_pass:
        size = full_image_size or max(getattr(_detector(model), "default_input_size", (max(sh, sw),)))
        boxed = [_letterbox(image, int(size)) for image in image_list]
        whole = _run_in_batches(predictor, [b[0] for b in boxed], [b[1] for b in boxed], batch_size)
        for i, (d, (_, (rh, rw))) in enumerate(zip(whole, boxed, strict=True)):
            h, w = image_list[i].shape[-2:]
            scale = d["boxes"].new_tensor([w / rw, h / rh, w / rw, h / rh])  # [4]
            parts.append({**d, "boxes": d["boxes"] * scale, "image": i})
    return [
        _merge_image([p for p in parts if p["image"] == i], merge, match_metric, match_thresh, max_detections)
        for i in range(len(image_list))
    ]


def _pad(image: Tensor) -> float:
    from detforge.data.transforms import pad_value

    return pad_value(image.dtype)


def _detector(model: Any) -> Any:
    """The ``Detector`` inside an ``ObjectDetector`` (or the model itself)."""
    return getattr(model, "model", model)


def _merge_image(
    parts: list[dict[str, Any]], merge: MergeMethod, metric: MatchMetric, thresh: float, limit: int | None
) -> dict[str, Tensor]:
    boxes = torch.cat([p["boxes"] for p in parts]) if parts else torch.zeros(0, 4)
    scores = torch.cat([p["scores"] for p in parts]) if parts else torch.zeros(0)
    labels = torch.cat([p["labels"] for p in parts]) if parts else torch.zeros(0, dtype=torch.int64)
    merged = merge_detections(boxes, scores, labels, merge, metric, thresh)
    out = {k: merged[k] for k in ("boxes", "scores", "labels")}
    return {k: v[:limit] for k, v in out.items()} if limit is not None else out


def add_slicing_arguments(parser: Any) -> None:
    """The sliced-inference flags of ``detforge predict`` and ``detforge val`` (an argparse parser)."""
    group = parser.add_argument_group("sliced inference (images larger than the network input)")
    group.add_argument("--slice", type=int, default=None, help="tile size in pixels; off when not given")
    group.add_argument("--overlap", type=float, default=0.2, help="tile overlap ratio in [0, 1) (0.2)")
    group.add_argument(
        "--full-image", action="store_true", help="also run the whole image letterboxed to --imgsz (large objects)"
    )
    group.add_argument("--merge", choices=("nms", "nmm"), default="nms", help="merge of tile duplicates (nms)")
    group.add_argument("--match-metric", choices=("iou", "ios"), default="ios", help="merge match metric (ios)")
    group.add_argument("--match-thresh", type=float, default=0.5, help="merge match threshold (0.5)")


def slicing_options(args: Any, full_image_size: int | None = None) -> dict[str, Any] | None:
    """:func:`sliced_predict`'s keywords from :func:`add_slicing_arguments`' flags (None without ``--slice``)."""
    if args.slice is None:
        return None
    return {
        "slice_size": int(args.slice),
        "overlap": float(args.overlap),
        "full_image_pass": bool(args.full_image),
        "full_image_size": full_image_size,
        "merge": args.merge,
        "match_metric": args.match_metric,
        "match_thresh": float(args.match_thresh),
    }
