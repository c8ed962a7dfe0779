"""Box formats and conversions, thin over torchvision.ops.

Inside detforge every box is ``xyxy`` in absolute pixels, float32 ``[N, 4]``. The converters here are the
only place other formats appear; readers call them at the edge and exporters call them on the way out.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor
from torchvision.ops import box_area, box_convert, box_iou, clip_boxes_to_image, remove_small_boxes

__all__ = [
    "BoxFormat",
    "box_area",
    "box_iou",
    "clip_boxes_to_image",
    "cxcywh_norm_to_xyxy",
    "remove_small_boxes",
    "scale_boxes",
    "to_xyxy",
    "xyxy_to",
    "xyxy_to_coco",
    "xyxy_to_cxcywh_norm",
]

BoxFormat = Literal["xyxy", "xywh", "cxcywh"]
_FORMATS = ("xyxy", "xywh", "cxcywh")


def _check(fmt: str) -> None:
    if fmt not in _FORMATS:
        raise ValueError(f"box format must be one of {_FORMATS}, got {fmt!r}")


def to_xyxy(boxes: Tensor, fmt: BoxFormat) -> Tensor:
    """Convert ``boxes`` (Tensor[N, 4], pixels, in ``fmt``) to xyxy pixels (Tensor[N, 4] float32)."""
    _check(fmt)
    boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    return boxes.clone() if fmt == "xyxy" else box_convert(boxes, fmt, "xyxy")


def xyxy_to(boxes: Tensor, fmt: BoxFormat) -> Tensor:
    """Convert xyxy pixel ``boxes`` (Tensor[N, 4]) to ``fmt`` (Tensor[N, 4])."""
    _check(fmt)
    boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    return boxes.clone() if fmt == "xyxy" else box_convert(boxes, "xyxy", fmt)


def xyxy_to_coco(boxes: Tensor) -> Tensor:
    """xyxy pixels (Tensor[N, 4]) -> COCO ``[x, y, w, h]`` pixels (Tensor[N, 4])."""
    return xyxy_to(boxes, "xywh")


def cxcywh_norm_to_xyxy(boxes: Tensor, height: int, width: int) -> Tensor:
    """YOLO-style normalised ``cx cy w h`` in [0, 1] (Tensor[N, 4]) -> xyxy pixels (Tensor[N, 4])."""
    boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    scale = boxes.new_tensor([width, height, width, height])
    return box_convert(boxes * scale, "cxcywh", "xyxy")


def xyxy_to_cxcywh_norm(boxes: Tensor, height: int, width: int) -> Tensor:
    """xyxy pixels (Tensor[N, 4]) -> normalised ``cx cy w h`` (Tensor[N, 4]) for YOLO label files."""
    boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    scale = boxes.new_tensor([width, height, width, height])
    return box_convert(boxes, "xyxy", "cxcywh") / scale


def scale_boxes(boxes: Tensor, from_size: tuple[int, int], to_size: tuple[int, int]) -> Tensor:
    """Rescale xyxy ``boxes`` (Tensor[N, 4]) from an image of ``from_size=(h, w)`` to ``to_size=(h, w)``."""
    (fh, fw), (th, tw) = from_size, to_size
    scale = boxes.new_tensor([tw / fw, th / fh, tw / fw, th / fh])
    return boxes * scale
