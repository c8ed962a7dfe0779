"""The RoI box head: multi-scale RoIAlign (torchvision's ``MultiScaleRoIAlign`` level mapping, on flat
RoIs with their image index so any batch size traces into one graph), the box heads (two FC layers, or
convolutions + one FC layer) and the class-specific box predictor."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from detforge.models.faster_rcnn.roi_align import eager_on_cpu, pooled_roi_align
from detforge.models.faster_rcnn.roi_gather import gather_roi_align

__all__ = [
    "BoxHeadType",
    "ConvFCHead",
    "FastRCNNPredictor",
    "MultiScaleRoIPool",
    "TwoMLPHead",
    "build_box_head",
]

BoxHeadType = Literal["two_mlp", "conv_fc"]
"""``two_mlp``: flatten + two FC layers (torchvision's ``TwoMLPHead``); ``conv_fc``: 3x3 conv + BatchNorm + ReLU
layers, then one FC layer (torchvision's ``FastRCNNConvFCHead`` of the v2 models)."""


class MultiScaleRoIPool(nn.Module):
    """RoIAlign on the pyramid level a box's size picks (Feature Pyramid Networks, eq. 1; torchvision's
    ``LevelMapper``: level ``floor(4 + log2(sqrt(area) / 224))`` clamped to the levels pooled). On the CPU
    all levels pool in one gather (:func:`gather_roi_align`); elsewhere, and in traced or exported graphs,
    with torchvision's ``roi_align`` per level.

    Args:
        strides: strides of the pooled levels (e.g. 4, 8, 16, 32: P2-P5), finest first; equal strides are
            allowed (torchvision's MobileNetV3-FPN: 32, 32): every RoI then pools from the first of them.
        output_size: RoIAlign output (7 x 7).
        sampling_ratio: RoIAlign sampling points per bin (2, as torchvision).

    ``forward(features [Tensor[B, C, H_l, W_l] per pooled level], boxes Tensor[K, 4], image_idx Tensor[K])
    -> Tensor[K, C, output_size, output_size]``.
    """

    def __init__(self, strides: Sequence[int], output_size: int = 7, sampling_ratio: int = 2) -> None:
        super().__init__()
        self.scales = [1.0 / int(s) for s in strides]
        self.k_min = int(round(math.log2(int(strides[0]))))
        self.k_max = int(round(math.log2(int(strides[-1]))))
        self.output_size = int(output_size)
        self.sampling_ratio = int(sampling_ratio)

    def levels(self, boxes: Tensor) -> Tensor:
        """Pooled level index of each box (Tensor[K] int64)."""
        size = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).sqrt()  # [K]
        level = torch.floor(4 + torch.log2(size / 224) + torch.tensor(1e-6, dtype=size.dtype))
        return (level.clamp(min=self.k_min, max=self.k_max) - self.k_min).to(torch.int64)

    def forward(self, features: Sequence[Tensor], boxes: Tensor, image_idx: Tensor) -> Tensor:
        rois = torch.cat([image_idx.to(boxes.dtype)[:, None], boxes], dim=1)  # [K, 5]
        if self.sampling_ratio > 0 and eager_on_cpu(features[0]):  # ONNX gets torchvision's roi_align
            return gather_roi_align(
                features, rois, self.levels(boxes), self.scales, self.output_size, self.sampling_ratio
            )  # one level: every RoI's level is 0
        if len(features) == 1:
            return pooled_roi_align(features[0], rois, self.output_size, self.scales[0], self.sampling_ratio)
        levels = self.levels(boxes)
        channels = features[0].shape[1]
        out = rois.new_zeros(rois.shape[0], channels, self.output_size, self.output_size)
        for level, (feature, scale) in enumerate(zip(features, self.scales)):
            idx = torch.where(levels == level)[0]  # [K_l]
            pooled = pooled_roi_align(
                feature, rois[idx], self.output_size, scale, self.sampling_ratio
            )  # [K_l, C, S, S]
            # in place: a copy of out per level cost 10% of inference
            out.index_put_((idx,), pooled.to(out.dtype))
        return out


class TwoMLPHead(nn.Module):
    """Flatten + two fully connected layers with ReLU (torchvision's ``TwoMLPHead``): [K, C, S, S] -> [K, D]."""

    def __init__(self, in_features: int, representation_size: int) -> None:
        super().__init__()
        self.fc6 = nn.Linear(in_features, representation_size)
        self.fc7 = nn.Linear(representation_size, representation_size)
        self.out_features = int(representation_size)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.fc7(torch.relu(self.fc6(x.flatten(1)))))


class ConvFCHead(nn.Module):
    """3x3 conv (no bias) + BatchNorm + ReLU layers, flatten, one FC layer + ReLU (torchvision's
    ``FastRCNNConvFCHead`` with ``norm_layer=nn.BatchNorm2d``): [K, C, S, S] -> [K, D].

    Args:
        in_channels: channels of the pooled RoI features; roi_size: their side S.
        conv_channels: output channels of each conv layer (torchvision's v2: four of 256).
        representation_size: width D of the FC layer.
    """

    def __init__(
        self, in_channels: int, roi_size: int, conv_channels: Sequence[int], representation_size: int
    ) -> None:
        super().__init__()
        layers, previous = [], int(in_channels)
        for channels in conv_channels:
            conv = nn.Conv2d(previous, int(channels), 3, padding=1, bias=False)
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            layers.append(nn.Sequential(conv, nn.BatchNorm2d(int(channels)), nn.ReLU(inplace=True)))
            previous = int(channels)
        self.convs = nn.Sequential(*layers)
        self.fc = nn.Linear(previous * int(roi_size) ** 2, representation_size)
        self.out_features = int(representation_size)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.fc(self.convs(x).flatten(1)))  # [K, D]


def build_box_head(
    kind: BoxHeadType, in_channels: int, roi_size: int, representation_size: int, conv_channels: Sequence[int]
) -> nn.Module:
    """The box head ``kind`` (:data:`BoxHeadType`) on RoI features Tensor[K, in_channels, roi_size, roi_size];
    its ``out_features`` is ``representation_size``."""
    if kind == "two_mlp":
        return TwoMLPHead(in_channels * roi_size**2, representation_size)
    if kind == "conv_fc":
        return ConvFCHead(in_channels, roi_size, conv_channels, representation_size)
    raise ValueError(f"box_head must be one of ('two_mlp', 'conv_fc'), got {kind!r}")


class FastRCNNPredictor(nn.Module):
    """Class scores (``num_classes + 1``, index 0 the background) and class-specific box deltas
    (torchvision's ``FastRCNNPredictor``): [K, D] -> (Tensor[K, C + 1], Tensor[K, C + 1, 4])."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.cls_score = nn.Linear(in_features, num_classes + 1)
        self.bbox_pred = nn.Linear(in_features, (num_classes + 1) * 4)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.cls_score(x), self.bbox_pred(x).reshape(x.shape[0], -1, 4)
