"""The geometry module: box formats and conversions, location grids and box coders.

Inside detforge every box is ``xyxy`` in absolute pixels, float32 ``[N, 4]``. The converters here are the
only place other formats appear; readers call them at the edge and exporters call them on the way out.
Location grids (:func:`grid_points`) and the box coders (side distances :func:`ltrb_to_xyxy`, centre + log
size :func:`centre_size_to_xyxy`, centre + linear size :func:`offset_size_to_xyxy`, anchor deltas
:class:`AnchorBoxCoder`, YOLOv2/v3 sigmoid offset + anchor size :func:`yolo_to_xyxy` over :func:`anchor_grid`,
YOLOv1 cells :func:`cell_to_xyxy`) live here too, so no model, head, assigner or exporter re-derives them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import box_area, box_convert, box_iou, clip_boxes_to_image, remove_small_boxes

__all__ = [
    "AnchorBoxCoder",
    "BoxFormat",
    "anchor_grid",
    "cell_to_xyxy",
    "xyxy_to_cell",
    "yolo_to_xyxy",
    "xyxy_to_yolo",
    "centre_size_to_xyxy",
    "feature_sizes",
    "grid_points",
    "grid_points_yx",
    "offset_size_to_xyxy",
    "padded_strides",
    "ltrb_to_origin_xyxy",
    "ltrb_to_xyxy",
    "xyxy_to_centre_size",
    "xyxy_to_ltrb",
    "xyxy_to_offset_size",
    "box_area",
    "box_iou",
    "clip_boxes_to_image",
    "convert_boxes",
    "cxcywh_norm_to_xyxy",
    "rel_cxcywh_to_xyxy",
    "remove_small_boxes",
    "scale_boxes",
    "to_xyxy",
    "voc_to_xyxy",
    "xyxy_to",
    "xyxy_to_coco",
    "xyxy_to_cxcywh_norm",
    "xyxy_to_rel_cxcywh",
    "xyxy_to_voc",
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


def convert_boxes(boxes: Tensor | np.ndarray, in_fmt: BoxFormat, out_fmt: BoxFormat) -> Tensor | np.ndarray:
    """Convert ``boxes`` (Tensor or ndarray [..., 4]) from ``in_fmt`` to ``out_fmt``, keeping the type, shape,
    dtype and device (unlike :func:`to_xyxy` / :func:`xyxy_to`, which return float32 ``[N, 4]``).

    Float64 input stays float64, so evaluation code converts without losing precision; an ndarray in gives an
    ndarray out (same arithmetic as torchvision's ``box_convert``).
    """
    _check(in_fmt)
    _check(out_fmt)
    if isinstance(boxes, np.ndarray):
        return convert_boxes(torch.from_numpy(np.ascontiguousarray(boxes)), in_fmt, out_fmt).numpy()
    return boxes.clone() if in_fmt == out_fmt else box_convert(boxes, in_fmt, out_fmt)


def voc_to_xyxy(boxes: Tensor | np.ndarray) -> Tensor | np.ndarray:
    """Pascal VOC corners (1-based pixel indices ``xmin..xmax``, Tensor or ndarray [..., 4]) -> continuous
    xyxy pixels ``[xmin - 1, ymin - 1, xmax, ymax]`` (same type and shape; float dtypes kept, integers become float)."""
    return boxes - _like(boxes, (1.0, 1.0, 0.0, 0.0))


def xyxy_to_voc(boxes: Tensor | np.ndarray) -> Tensor | np.ndarray:
    """Inverse of :func:`voc_to_xyxy`: continuous xyxy pixels (Tensor or ndarray [..., 4]) -> 1-based VOC
    corners ``[x1 + 1, y1 + 1, x2, y2]`` (same type and shape, float dtypes kept; no rounding: a writer rounds
    first, e.g. ``xyxy_to_voc(boxes.round())``)."""
    return boxes + _like(boxes, (1.0, 1.0, 0.0, 0.0))


def _like(boxes: Tensor | np.ndarray, values: tuple[float, ...]) -> Tensor | np.ndarray:
    if isinstance(boxes, np.ndarray):
        return np.asarray(values, dtype=boxes.dtype if boxes.dtype.kind == "f" else np.float64)
    return (
        boxes.new_tensor(values) if boxes.is_floating_point() else torch.tensor(values, device=boxes.device)
    )


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


def _size_scale(image_hw: Tensor) -> Tensor:
    """(h, w) sizes (Tensor[..., 2]) -> the (w, h, w, h) scale (Tensor[..., 4]) of boxes in those images."""
    return image_hw[..., [1, 0, 1, 0]]


def xyxy_to_rel_cxcywh(boxes: Tensor, image_hw: Tensor) -> Tensor:
    """Batched, per-image sizes: xyxy pixels (Tensor[..., 4]) -> ``(cx, cy, w, h)`` relative to the image's size
    (DETR's box targets), with ``image_hw`` (h, w) of each box's image broadcast against ``boxes[..., :2]``
    (e.g. boxes [B, G, 4] with sizes [B, 1, 2]). A padded batch passes each image's real size."""
    return box_convert(boxes, "xyxy", "cxcywh") / _size_scale(image_hw.to(boxes))


def rel_cxcywh_to_xyxy(boxes: Tensor, image_hw: Tensor) -> Tensor:
    """Inverse of :func:`xyxy_to_rel_cxcywh`: relative ``(cx, cy, w, h)`` (Tensor[..., 4]) -> xyxy pixels of
    images of (h, w) ``image_hw`` (Tensor[..., 2], broadcast like ``boxes[..., :2]``). Traceable (ONNX)."""
    cxcy, wh = (boxes * _size_scale(image_hw.to(boxes))).split(2, dim=-1)
    return torch.cat([cxcy - wh / 2, cxcy + wh / 2], dim=-1)


def scale_boxes(boxes: Tensor, from_size: tuple[int, int], to_size: tuple[int, int]) -> Tensor:
    """Rescale xyxy ``boxes`` (Tensor[N, 4]) from an image of ``from_size=(h, w)`` to ``to_size=(h, w)``."""
    (fh, fw), (th, tw) = from_size, to_size
    scale = boxes.new_tensor([tw / fw, th / fh, tw / fw, th / fh])
    return boxes * scale


# ---------------------------------------------------------------------------------------------- location grids
def grid_points(
    feat_sizes: Sequence[tuple[int, int]],
    strides: Sequence[int | float],
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    offset: float = 0.5,
) -> tuple[Tensor, Tensor]:
    """Image points of every feature-map location, levels concatenated, row-major inside a level.

    Location ``(fx, fy)`` of a level with stride ``s`` is the image point ``((fx + offset) s, (fy + offset) s)``:
    ``offset=0.5`` gives cell centres (FCOS, YOLOX and the assigners' convention), ``offset=0`` cell corners
    (YOLO-style offsets from the cell's top-left corner).

    Args:
        feat_sizes: (H, W) of each level.
        strides: stride of each level in pixels.

    Returns:
        points (Tensor[P, 2], (x, y) pixels) and their strides (Tensor[P]); P = sum of H * W.
    """
    if len(feat_sizes) != len(strides):
        raise ValueError(f"got {len(feat_sizes)} feature sizes for {len(strides)} strides")
    points, point_strides = [], []
    for (h, w), s in zip(feat_sizes, strides):
        xs = (torch.arange(int(w), device=device, dtype=dtype) + offset) * s  # [W]
        ys = (torch.arange(int(h), device=device, dtype=dtype) + offset) * s  # [H]
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")  # [H, W] each
        points.append(torch.stack([grid_x, grid_y], dim=-1).reshape(-1, 2))  # [HW, 2]
        point_strides.append(torch.full((int(h) * int(w),), float(s), device=device, dtype=dtype))  # [HW]
    return torch.cat(points), torch.cat(point_strides)


def feature_sizes(image_size: tuple[int, int], strides: Sequence[int]) -> list[tuple[int, int]]:
    """(H, W) of each level for an input of ``image_size`` (h, w): ``ceil(h / s), ceil(w / s)`` (stride-2
    convolutions with padding round up)."""
    h, w = image_size
    return [(-(-int(h) // int(s)), -(-int(w) // int(s))) for s in strides]


def padded_strides(
    image_size: tuple[int, int], feat_sizes: Sequence[tuple[int, int]]
) -> list[tuple[int, int]]:
    """Per-level (stride_y, stride_x) as torchvision's ``AnchorGenerator`` derives them: the padded input's
    side // the feature map's side. Not the nominal stride where the input is not a multiple of it: an 800 x
    1216 batch has P6 13 x 19 (stride (61, 64), nominal 64) and P7 7 x 10 (stride (114, 121), nominal 128)."""
    h, w = int(image_size[0]), int(image_size[1])
    return [(h // int(fh), w // int(fw)) for fh, fw in feat_sizes]


def grid_points_yx(
    feat_sizes: Sequence[tuple[int, int]],
    strides_yx: Sequence[tuple[float, float]],
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    offset: float = 0.0,
) -> Tensor:
    """:func:`grid_points` with a stride per axis: location ``(fx, fy)`` of a level with strides ``(sy, sx)``
    is the image point ``((fx + offset) sx, (fy + offset) sy)``. With :func:`padded_strides` and ``offset=0``
    these are torchvision's anchor centres (``AnchorGenerator``: the point of cell (fx, fy) is its top-left
    corner, ``fx * (W // w)``).

    Returns:
        points (Tensor[P, 2], (x, y) pixels); P = sum of H * W, levels concatenated, row-major inside a level.
    """
    if len(feat_sizes) != len(strides_yx):
        raise ValueError(f"got {len(feat_sizes)} feature sizes for {len(strides_yx)} strides")
    points = []
    for (h, w), (sy, sx) in zip(feat_sizes, strides_yx):
        xs = (torch.arange(int(w), device=device, dtype=dtype) + offset) * sx  # [W]
        ys = (torch.arange(int(h), device=device, dtype=dtype) + offset) * sy  # [H]
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")  # [H, W] each
        points.append(torch.stack([grid_x, grid_y], dim=-1).reshape(-1, 2))  # [HW, 2]
    return torch.cat(points)


# ---------------------------------------------------------------------------------------------- box coders
def ltrb_to_xyxy(points: Tensor, ltrb: Tensor) -> Tensor:
    """Side distances to boxes (FCOS): ``points`` (Tensor[P, 2]) and ``ltrb`` (Tensor[..., P, 4], pixels)
    -> xyxy (Tensor[..., P, 4])."""
    return torch.cat([points - ltrb[..., :2], points + ltrb[..., 2:]], dim=-1)


def xyxy_to_ltrb(points: Tensor, boxes: Tensor) -> Tensor:
    """Inverse of :func:`ltrb_to_xyxy`: distances from ``points`` (Tensor[..., 2]) to the sides of ``boxes``
    (Tensor[..., 4] xyxy, broadcast against the points) -> Tensor[..., 4] (l, t, r, b)."""
    return torch.cat([points - boxes[..., :2], boxes[..., 2:] - points], dim=-1)


def ltrb_to_origin_xyxy(ltrb: Tensor) -> Tensor:
    """Distances (Tensor[..., 4]) as an xyxy box around the origin (Tensor[..., 4]): IoUs between two
    distance vectors of one point equal the IoUs of their boxes."""
    return torch.cat([-ltrb[..., :2], ltrb[..., 2:]], dim=-1)


def centre_size_to_xyxy(
    points: Tensor, strides: Tensor, deltas: Tensor, max_log_size: float | None = None
) -> Tensor:
    """Centre offset + log size in stride units (YOLOX, NightVision, Phantom) -> xyxy pixels.

    Args:
        points: Tensor[P, 2] (x, y) pixels the offsets start from (cell centres or corners).
        strides: Tensor[P] stride of each point.
        deltas: Tensor[..., P, 4] ``(dx, dy, log w, log h)``: centre ``point + d * stride``, size
            ``exp(log size) * stride``.
        max_log_size: clamp on the log sizes before ``exp`` (None: no clamp).

    Returns:
        Tensor[..., P, 4] xyxy pixels.
    """
    s = strides[:, None]  # [P, 1]
    centre = points + deltas[..., :2] * s  # [..., P, 2]
    log_size = deltas[..., 2:] if max_log_size is None else deltas[..., 2:].clamp(max=max_log_size)
    half = log_size.exp() * s * 0.5  # [..., P, 2]
    return torch.cat([centre - half, centre + half], dim=-1)


def xyxy_to_centre_size(points: Tensor, strides: Tensor, boxes: Tensor) -> Tensor:
    """Inverse of :func:`centre_size_to_xyxy`: xyxy ``boxes`` (Tensor[..., P, 4]) -> ``(dx, dy, log w,
    log h)`` (Tensor[..., P, 4]) relative to ``points`` (Tensor[P, 2]) in units of ``strides`` (Tensor[P])."""
    s = strides[:, None]  # [P, 1]
    centre = (boxes[..., :2] + boxes[..., 2:]) * 0.5  # [..., P, 2]
    size = (boxes[..., 2:] - boxes[..., :2]).clamp(min=1e-6)  # [..., P, 2]
    return torch.cat([(centre - points) / s, (size / s).log()], dim=-1)


def offset_size_to_xyxy(points: Tensor, strides: Tensor, deltas: Tensor) -> Tensor:
    """Centre offset + linear size in stride units (CenterNet) -> xyxy pixels.

    Args:
        points: Tensor[P, 2] (x, y) pixels the offsets start from (CenterNet: cell corners, ``offset=0``).
        strides: Tensor[P] stride of each point.
        deltas: Tensor[..., P, 4] ``(dx, dy, w, h)``: centre ``point + d * stride``, size ``(w, h) * stride``.

    Points and strides may also carry the batch axes (Tensor[..., P, 2] and Tensor[..., P]).

    Returns:
        Tensor[..., P, 4] xyxy pixels.
    """
    s = strides.unsqueeze(-1)  # [..., P, 1]
    centre = points + deltas[..., :2] * s  # [..., P, 2]
    half = deltas[..., 2:] * s * 0.5  # [..., P, 2]
    return torch.cat([centre - half, centre + half], dim=-1)


def xyxy_to_offset_size(points: Tensor, strides: Tensor, boxes: Tensor) -> Tensor:
    """Inverse of :func:`offset_size_to_xyxy`: xyxy ``boxes`` (Tensor[..., P, 4]) -> ``(dx, dy, w, h)``
    (Tensor[..., P, 4]) relative to ``points`` (Tensor[P, 2]) in units of ``strides`` (Tensor[P])."""
    s = strides.unsqueeze(-1)  # [..., P, 1]
    centre = (boxes[..., :2] + boxes[..., 2:]) * 0.5  # [..., P, 2]
    return torch.cat([(centre - points) / s, (boxes[..., 2:] - boxes[..., :2]) / s], dim=-1)


class AnchorBoxCoder:
    """Anchor deltas with weights (Faster R-CNN; torchvision's ``BoxCoder``), on any batch shape.

    ``encode(anchors, boxes) -> deltas``, ``decode(anchors, deltas) -> boxes``; anchors and boxes are xyxy
    pixels (Tensor[..., 4]), deltas ``(wx * dx / w_a, wy * dy / h_a, ww * log(w / w_a), wh * log(h / h_a))``
    (Tensor[..., 4]). Decoding clamps the log sizes at ``log(1000 / 16)`` as torchvision does.

    Args:
        weights: (wx, wy, ww, wh); (1, 1, 1, 1) for an RPN, (10, 10, 5, 5) for a Fast R-CNN box head.
        max_log_size: clamp on the decoded log size ratios.
    """

    def __init__(
        self,
        weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
        max_log_size: float = math.log(1000.0 / 16),
    ) -> None:
        if len(weights) != 4:
            raise ValueError(f"AnchorBoxCoder weights must be 4 numbers (wx, wy, ww, wh), got {weights}")
        self.weights = tuple(float(w) for w in weights)
        self.max_log_size = float(max_log_size)

    @staticmethod
    def _centre_size(boxes: Tensor) -> tuple[Tensor, Tensor]:
        size = boxes[..., 2:] - boxes[..., :2]  # [..., 2]
        return boxes[..., :2] + 0.5 * size, size

    def encode(self, anchors: Tensor, boxes: Tensor) -> Tensor:
        """Deltas (Tensor[..., 4]) that take ``anchors`` (Tensor[..., 4]) to ``boxes`` (Tensor[..., 4])."""
        w = anchors.new_tensor(self.weights)  # [4]
        a_ctr, a_size = self._centre_size(anchors)
        b_ctr, b_size = self._centre_size(boxes)
        d_ctr = (b_ctr - a_ctr) / a_size * w[:2]  # [..., 2]
        d_size = (b_size / a_size).log() * w[2:]  # [..., 2]
        return torch.cat([d_ctr, d_size], dim=-1)

    def decode(self, anchors: Tensor, deltas: Tensor) -> Tensor:
        """xyxy boxes (Tensor[..., 4]) from ``anchors`` (Tensor[..., 4]) and ``deltas`` (Tensor[..., 4])."""
        w = deltas.new_tensor(self.weights)  # [4]
        a_ctr, a_size = self._centre_size(anchors.to(deltas.dtype))
        ctr = deltas[..., :2] / w[:2] * a_size + a_ctr  # [..., 2]
        size = (deltas[..., 2:] / w[2:]).clamp(max=self.max_log_size).exp() * a_size  # [..., 2]
        return torch.cat([ctr - 0.5 * size, ctr + 0.5 * size], dim=-1)


# ---------------------------------------------------------------------------------------------- YOLO anchors
def anchor_grid(
    feat_sizes: Sequence[tuple[int, int]],
    strides: Sequence[int | float],
    anchors: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """Cell corners, strides and anchor sizes of every (level, row, column, anchor) slot of a YOLOv2/v3 head.

    Args:
        feat_sizes: (H, W) of each level.
        strides: stride of each level in pixels.
        anchors: Tensor[L * A, 2] anchor (w, h) in pixels, A per level, level ``l`` owning rows
            ``l * A .. (l + 1) * A - 1``.

    Returns:
        corners (Tensor[P, 2], (x, y) of the cell's top-left corner in pixels), strides (Tensor[P]) and anchor
        sizes (Tensor[P, 2]); P = sum of H * W * A, levels concatenated, row-major inside a level, the A
        anchors of a cell consecutive.
    """
    num_levels = len(feat_sizes)
    if anchors.shape[0] % max(num_levels, 1) != 0:
        raise ValueError(f"{anchors.shape[0]} anchors do not split evenly over {num_levels} levels")
    per_level = anchors.shape[0] // max(num_levels, 1)
    corners, point_strides = grid_points(feat_sizes, strides, anchors.device, anchors.dtype, offset=0.0)
    counts = [int(h) * int(w) for h, w in feat_sizes]
    sizes = [
        anchors[level * per_level : (level + 1) * per_level].repeat(n, 1)  # [HW * A, 2]
        for level, n in enumerate(counts)
    ]
    return (
        corners.repeat_interleave(per_level, dim=0),  # [P, 2]
        point_strides.repeat_interleave(per_level),  # [P]
        torch.cat(sizes) if sizes else anchors.new_zeros(0, 2),  # [P, 2]
    )


def yolo_to_xyxy(
    corners: Tensor, strides: Tensor, anchor_sizes: Tensor, t: Tensor, max_log_size: float = 10.0
) -> Tensor:
    """YOLOv2/v3 box coder: ``(tx, ty, tw, th)`` -> xyxy pixels. Centre ``corner + sigmoid(t_xy) * stride``
    (inside the cell), size ``exp(t_wh) * anchor``.

    Args:
        corners: Tensor[P, 2] cell top-left corners (pixels); strides: Tensor[P]; anchor_sizes: Tensor[P, 2]
            (:func:`anchor_grid`).
        t: Tensor[..., P, 4] raw predictions.
        max_log_size: clamp on ``t_wh`` before ``exp``.
    """
    centre = corners + t[..., :2].sigmoid() * strides[:, None]  # [..., P, 2]
    half = t[..., 2:].clamp(max=max_log_size).exp() * anchor_sizes * 0.5  # [..., P, 2]
    return torch.cat([centre - half, centre + half], dim=-1)


def xyxy_to_yolo(corners: Tensor, strides: Tensor, anchor_sizes: Tensor, boxes: Tensor) -> Tensor:
    """Targets of :func:`yolo_to_xyxy` for xyxy ``boxes`` (Tensor[..., P, 4]): the centre's offset inside the
    cell in [0, 1] (the target of ``sigmoid(t_xy)``) and ``log(size / anchor)`` (the target of ``t_wh``),
    Tensor[..., P, 4]."""
    centre = (boxes[..., :2] + boxes[..., 2:]) * 0.5  # [..., P, 2]
    size = (boxes[..., 2:] - boxes[..., :2]).clamp(min=1e-6)  # [..., P, 2]
    return torch.cat([(centre - corners) / strides[:, None], (size / anchor_sizes).log()], dim=-1)


# ---------------------------------------------------------------------------------------------- YOLOv1 cells
def cell_to_xyxy(params: Tensor, grid: int, image_size: tuple[int, int]) -> Tensor:
    """YOLOv1 box coder: per-cell ``(x, y, sqrt w, sqrt h)`` -> xyxy pixels.

    Args:
        params: Tensor[..., S * S, K, 4] (cells row-major, K boxes per cell): the centre's offset inside its
            cell in [0, 1] and the square roots of the width and height as fractions of the image.
        grid: S, the cells per side; a cell is ``(h / S) x (w / S)`` pixels whatever the image's shape.
        image_size: (h, w) of the input in pixels.
    """
    h, w = float(image_size[0]), float(image_size[1])
    index = torch.arange(grid * grid, device=params.device)  # [S * S]
    cell = torch.stack([index % grid, index // grid], dim=-1).to(params.dtype)  # [S * S, 2] (col, row)
    cell_size = params.new_tensor([w / grid, h / grid])  # [2]
    centre = (cell[:, None, :] + params[..., :2]) * cell_size  # [..., S * S, K, 2]
    half = params[..., 2:] ** 2 * params.new_tensor([w, h]) * 0.5  # [..., S * S, K, 2]
    return torch.cat([centre - half, centre + half], dim=-1)


def xyxy_to_cell(boxes: Tensor, grid: int, image_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Inverse of :func:`cell_to_xyxy` for xyxy ``boxes`` (Tensor[..., 4]): the index of the cell holding each
    centre (Tensor[...] int64, ``row * S + col``, clamped to the grid) and ``(x, y, sqrt w, sqrt h)``
    relative to that cell and the image (Tensor[..., 4])."""
    h, w = float(image_size[0]), float(image_size[1])
    cell_size = boxes.new_tensor([w / grid, h / grid])  # [2]
    centre = (boxes[..., :2] + boxes[..., 2:]) * 0.5 / cell_size  # [..., 2] in cells
    colrow = centre.floor().clamp(0, grid - 1)  # [..., 2]
    size = (boxes[..., 2:] - boxes[..., :2]).clamp(min=0) / boxes.new_tensor([w, h])  # [..., 2]
    index = (colrow[..., 1] * grid + colrow[..., 0]).long()
    return index, torch.cat([centre - colrow, size.sqrt()], dim=-1)
