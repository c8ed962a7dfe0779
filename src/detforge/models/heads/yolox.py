"""YOLOX head (Ge et al. 2021): decoupled classification / box / objectness branches per level, SiLU."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from detforge.boxes import centre_size_to_xyxy, grid_points

__all__ = ["YOLOXHead"]

_ACTS = {"silu": nn.SiLU, "relu": nn.ReLU, "lrelu": lambda: nn.LeakyReLU(0.1)}


def _conv_bn_act(c_in: int, c_out: int, k: int, act: str) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False), nn.BatchNorm2d(c_out), _ACTS[act]()
    )


class YOLOXHead(nn.Module):
    """Per-level decoupled head; box predictions are decoded to xyxy pixels.

    Args:
        in_channels: channels of every input level (the FPN's ``out_channels``).
        num_classes: object classes (no background class; sigmoid per class).
        strides: stride of each level in pixels (one head per level).
        width: hidden channels of the stem and branches.
        num_convs: 3x3 conv layers in each of the classification and box branches.
        act: activation: "silu" (YOLOX), "relu" or "lrelu".
        prior_prob: initial probability of the classification and objectness outputs.

    ``forward(features: list[Tensor[B, in_channels, H_l, W_l]])`` returns a dict, A = sum of H_l * W_l,
    levels concatenated, row-major inside a level:

    - ``cls_logits``: Tensor[B, A, num_classes];
    - ``boxes``: Tensor[B, A, 4] decoded xyxy pixels: centre ``point + dxy * stride``, size
      ``exp(dwh) * stride``, with ``point`` the location centre ``((fx + 0.5) s, (fy + 0.5) s)``;
    - ``obj_logits``: Tensor[B, A] objectness logits;
    - ``feat_sizes``: list of (H_l, W_l).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        strides: Sequence[int],
        width: int = 256,
        num_convs: int = 2,
        act: Literal["silu", "relu", "lrelu"] = "silu",
        prior_prob: float = 0.01,
    ) -> None:
        super().__init__()
        if act not in _ACTS:
            raise ValueError(f"act must be one of {tuple(_ACTS)}, got {act!r}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.strides = tuple(int(s) for s in strides)
        n = len(self.strides)
        self.stems = nn.ModuleList(_conv_bn_act(in_channels, width, 1, act) for _ in range(n))
        self.cls_branches = nn.ModuleList(
            nn.Sequential(*(_conv_bn_act(width, width, 3, act) for _ in range(num_convs))) for _ in range(n)
        )
        self.box_branches = nn.ModuleList(
            nn.Sequential(*(_conv_bn_act(width, width, 3, act) for _ in range(num_convs))) for _ in range(n)
        )
        self.cls_preds = nn.ModuleList(nn.Conv2d(width, num_classes, 1) for _ in range(n))
        self.box_preds = nn.ModuleList(nn.Conv2d(width, 4, 1) for _ in range(n))
        self.obj_preds = nn.ModuleList(nn.Conv2d(width, 1, 1) for _ in range(n))
        bias = -math.log((1 - prior_prob) / prior_prob)
        for conv in [*self.cls_preds, *self.obj_preds]:
            nn.init.constant_(conv.bias, bias)

    def forward(self, features: Sequence[Tensor]) -> dict[str, Tensor | list[tuple[int, int]]]:
        if len(features) != len(self.strides):
            raise ValueError(f"YOLOXHead has {len(self.strides)} levels, got {len(features)} feature maps")
        per_level = []
        feat_sizes = []
        for level, x in enumerate(features):
            x = self.stems[level](x)  # [B, width, H, W]
            cls_feat = self.cls_branches[level](x)
            box_feat = self.box_branches[level](x)
            out = torch.cat(
                [
                    self.cls_preds[level](cls_feat),
                    self.box_preds[level](box_feat),
                    self.obj_preds[level](box_feat),
                ],
                dim=1,
            )  # [B, C + 5, H, W]
            per_level.append(out.flatten(2))  # [B, C + 5, HW]
            feat_sizes.append((int(x.shape[-2]), int(x.shape[-1])))
        flat = torch.cat(per_level, dim=2).permute(0, 2, 1)  # [B, A, C + 5]
        c = self.num_classes
        points, point_strides = grid_points(feat_sizes, self.strides, flat.device, flat.dtype)  # [A, 2], [A]
        deltas = flat[..., c : c + 4]  # [B, A, 4] (dx, dy, log w, log h) in strides
        boxes = centre_size_to_xyxy(points, point_strides, deltas, max_log_size=20.0)  # [B, A, 4]
        return {
            "cls_logits": flat[..., :c],  # [B, A, C]
            "boxes": boxes,  # [B, A, 4]
            "obj_logits": flat[..., c + 4],  # [B, A]
            "feat_sizes": feat_sizes,
        }
