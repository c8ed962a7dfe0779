"""NightVision: a small multi-domain infrared detector (YOLOX-style decoupled heads on a CSP backbone).

Layout: thermal-adaptive stem (per-image thermal normalisation + band mixing for 1 or N bands) -> CSP
backbone (strides 4..32) -> thermal FPN (top-down + lateral, P3/P4/P5) -> one decoupled head per level
(classification, box regression, objectness) -> optional domain-classification head on P5.

Training uses SimOTA assignment (``detforge.assigners.SimOTAAssigner``). Presets on ``NightVisionConfig``
pick widths and class counts for wildlife, humans, vehicles, multi-band (interstellar) imagery and a
multi-domain model with domain tags; ``edge`` is the smallest.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms

from detforge.models.criteria import YOLOXCriterion
from detforge.models.edge.common import ConvBNAct, CSPBlock, DepthwiseSeparable, level_points
from detforge.targets import pad_targets

__all__ = ["NightVision", "NightVisionConfig", "ThermalDomain", "ThermalStem"]


class ThermalDomain(enum.IntEnum):
    """Scene domains the optional domain head classifies (index = class id of the domain head)."""

    Wildlife = 0
    Human = 1
    Interstellar = 2
    Vehicle = 3
    General = 4


@dataclass(frozen=True)
class NightVisionConfig:
    """What to build. ``NightVision.with_config(cfg)`` turns it into a model.

    Attributes:
        num_classes: object classes (no background).
        in_chans: input bands: 1 (thermal), 3 (three-band) or any count for multi-band imagery.
        input_width, input_height: default network input size in pixels.
        widths: backbone channels at strides 4, 8, 16, 32.
        fpn_channels: channels of P3/P4/P5 and of the heads.
        csp_depth: bottlenecks per CSP block.
        domain_head: add the domain-classification head (``ThermalDomain``).
        domain: the domain this model is meant for (informational; tags predictions).
        score_threshold, nms_threshold, max_detections: postprocess settings.
    """

    num_classes: int = 1
    in_chans: int = 1
    input_width: int = 320
    input_height: int = 320
    widths: tuple[int, int, int, int] = (32, 64, 128, 256)
    fpn_channels: int = 96
    csp_depth: int = 1
    domain_head: bool = False
    domain: ThermalDomain = ThermalDomain.General
    score_threshold: float = 0.05
    nms_threshold: float = 0.5
    max_detections: int = 100

    @classmethod
    def edge(cls, num_classes: int = 1) -> NightVisionConfig:
        """The smallest model (~0.2M parameters), for microcontroller-class edge devices."""
        return cls(num_classes=num_classes, widths=(24, 48, 96, 224), fpn_channels=64)

    @classmethod
    def wildlife(cls, num_classes: int = 5) -> NightVisionConfig:
        """Animals in thermal camera traps."""
        return cls(num_classes=num_classes, domain=ThermalDomain.Wildlife)

    @classmethod
    def human(cls) -> NightVisionConfig:
        """People (one class) for thermal surveillance and search-and-rescue."""
        return cls(num_classes=1, domain=ThermalDomain.Human)

    @classmethod
    def vehicle(cls, num_classes: int = 3) -> NightVisionConfig:
        """Vehicles (e.g. car, truck, motorcycle) in thermal traffic imagery."""
        return cls(num_classes=num_classes, domain=ThermalDomain.Vehicle)

    @classmethod
    def interstellar(cls, bands: int = 3, num_classes: int = 2) -> NightVisionConfig:
        """Multi-band infrared imagery with ``bands`` input channels."""
        if bands < 1:
            raise ValueError(f"bands must be >= 1, got {bands}")
        return cls(num_classes=num_classes, in_chans=bands, domain=ThermalDomain.Interstellar)

    @classmethod
    def multi_domain(cls, num_classes: int = 8) -> NightVisionConfig:
        """One model over all domains, with the domain-classification head on."""
        return cls(num_classes=num_classes, domain_head=True, domain=ThermalDomain.General)

    def with_overrides(self, **changes: Any) -> NightVisionConfig:
        return replace(self, **changes)


class ThermalStem(nn.Module):
    """Per-image thermal normalisation, band mixing, then a stride-2 conv.

    Thermal cameras differ in gain and offset; each image band is standardised by its own mean and standard
    deviation (``eps`` keeps flat images finite) before a learned 1x1 band mixer and a 3x3 stride-2 conv.
    ``forward(x Tensor[B, bands, H, W]) -> Tensor[B, out, H/2, W/2]``.
    """

    def __init__(self, in_chans: int, out_channels: int, eps: float = 1e-3) -> None:
        super().__init__()
        self.eps = eps
        mixed = max(in_chans, 4)
        self.band_mixer = nn.Conv2d(in_chans, mixed, kernel_size=1)
        self.conv = ConvBNAct(mixed, out_channels, kernel_size=3, stride=2, activation="silu")

    def forward(self, x: Tensor) -> Tensor:
        mean = x.mean(dim=(2, 3), keepdim=True)  # [B, bands, 1, 1]
        std = x.std(dim=(2, 3), keepdim=True) if x.shape[-1] * x.shape[-2] > 1 else torch.ones_like(mean)
        x = (x - mean) / (std + self.eps)
        return self.conv(self.band_mixer(x))


class _DecoupledHead(nn.Module):
    """One level's YOLOX head: 1x1 stem, then a classification branch and a box + objectness branch."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.stem = ConvBNAct(channels, channels, kernel_size=1, activation="silu")
        self.cls_branch = DepthwiseSeparable(channels, channels, activation="silu")
        self.reg_branch = DepthwiseSeparable(channels, channels, activation="silu")
        self.cls_out = nn.Conv2d(channels, num_classes, 1)
        self.bbox_out = nn.Conv2d(channels, 4, 1)
        self.obj_out = nn.Conv2d(channels, 1, 1)
        prior = -4.59  # sigmoid = 0.01: few positives at the start of training (RetinaNet prior)
        nn.init.constant_(self.cls_out.bias, prior)
        nn.init.constant_(self.obj_out.bias, prior)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = self.stem(x)
        reg = self.reg_branch(x)
        return self.cls_out(self.cls_branch(x)), self.bbox_out(reg), self.obj_out(reg)


class NightVision(nn.Module):
    """Multi-domain thermal detector with the detforge model protocol.

    ``forward(images Tensor[B, in_chans, H, W])`` returns ``cls_logits`` / ``bbox_pred`` / ``obj_logits``
    (lists over P3, P4, P5 of Tensor[B, C | 4 | 1, H_l, W_l]) and ``domain_logits`` (Tensor[B, 5]) when the
    domain head is on. ``bbox_pred`` is YOLOX's (dx, dy, log w, log h) in units of the level's stride.
    """

    strides = (8, 16, 32)

    def __init__(
        self,
        *,
        num_classes: int = 1,
        in_chans: int = 1,
        input_size: tuple[int, int] = (320, 320),
        widths: tuple[int, int, int, int] = (32, 64, 128, 256),
        fpn_channels: int = 96,
        csp_depth: int = 1,
        domain_head: bool = False,
        domain: ThermalDomain = ThermalDomain.General,
        score_threshold: float = 0.05,
        nms_threshold: float = 0.5,
        max_detections: int = 100,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if in_chans < 1:
            raise ValueError(f"in_chans must be >= 1, got {in_chans}")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.default_input_size = tuple(input_size)
        self.domain = ThermalDomain(domain)
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.max_detections = max_detections
        c2, c3, c4, c5 = widths
        self.stem = ThermalStem(in_chans, c2 // 2)  # stride 2
        self.stage2 = nn.Sequential(  # stride 4
            ConvBNAct(c2 // 2, c2, stride=2, activation="silu"), CSPBlock(c2, c2, depth=csp_depth)
        )
        self.stage3 = nn.Sequential(  # stride 8
            ConvBNAct(c2, c2, stride=2, groups=c2, activation="silu"), CSPBlock(c2, c3, depth=csp_depth)
        )
        self.stage4 = nn.Sequential(  # stride 16
            ConvBNAct(c3, c3, stride=2, groups=c3, activation="silu"), CSPBlock(c3, c4, depth=csp_depth)
        )
        self.stage5 = nn.Sequential(  # stride 32
            ConvBNAct(c4, c4, stride=2, groups=c4, activation="silu"), CSPBlock(c4, c5, depth=csp_depth)
        )
        # thermal FPN: lateral 1x1 to fpn_channels, top-down nearest upsampling + add, depthwise smoothing
        self.lateral = nn.ModuleList(
            ConvBNAct(c, fpn_channels, kernel_size=1, activation="silu") for c in (c3, c4, c5)
        )
        self.smooth = nn.ModuleList(
            DepthwiseSeparable(fpn_channels, fpn_channels, activation="silu") for _ in range(3)
        )
        self.heads = nn.ModuleList(_DecoupledHead(fpn_channels, num_classes) for _ in range(3))
        self.domain_head = (
            nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(fpn_channels, len(ThermalDomain)))
            if domain_head
            else None
        )
        self.criterion = YOLOXCriterion(self.strides, reg_weight=5.0)  # parameter-free

    @classmethod
    def with_config(cls, cfg: NightVisionConfig) -> NightVision:
        return cls(
            num_classes=cfg.num_classes,
            in_chans=cfg.in_chans,
            input_size=(cfg.input_height, cfg.input_width),
            widths=cfg.widths,
            fpn_channels=cfg.fpn_channels,
            csp_depth=cfg.csp_depth,
            domain_head=cfg.domain_head,
            domain=cfg.domain,
            score_threshold=cfg.score_threshold,
            nms_threshold=cfg.nms_threshold,
            max_detections=cfg.max_detections,
        )

    # ---- network -------------------------------------------------------------------------------------
    def _pyramid(self, images: Tensor) -> list[Tensor]:
        """P3, P4, P5 (Tensor[B, fpn_channels, H/s, W/s]) for s = 8, 16, 32."""
        if images.ndim != 4 or images.shape[1] != self.in_chans:
            raise ValueError(
                f"NightVision expects images Tensor[B, {self.in_chans}, H, W], got {tuple(images.shape)}"
            )
        c2 = self.stage2(self.stem(images))
        c3 = self.stage3(c2)
        c4 = self.stage4(c3)
        c5 = self.stage5(c4)
        p5 = self.lateral[2](c5)
        p4 = self.lateral[1](c4) + F.interpolate(p5, size=c4.shape[-2:], mode="nearest")
        p3 = self.lateral[0](c3) + F.interpolate(p4, size=c3.shape[-2:], mode="nearest")
        return [smooth(p) for smooth, p in zip(self.smooth, (p3, p4, p5), strict=True)]

    def forward_detection(self, x: Tensor) -> list[tuple[Tensor, Tensor, Tensor, Tensor | None]]:
        """Per level (P3, P4, P5): (cls Tensor[B, C, H, W], bbox Tensor[B, 4, H, W], obj Tensor[B, 1, H, W],
        domain logits Tensor[B, 5] or None; the domain logits repeat on every level)."""
        feats = self._pyramid(x)
        domain = self.domain_head(feats[-1]) if self.domain_head is not None else None
        return [(*head(f), domain) for head, f in zip(self.heads, feats, strict=True)]

    def forward(self, images: Tensor) -> dict[str, Any]:
        levels = self.forward_detection(images)
        out: dict[str, Any] = {
            "cls_logits": [lv[0] for lv in levels],
            "bbox_pred": [lv[1] for lv in levels],
            "obj_logits": [lv[2] for lv in levels],
        }
        if self.domain_head is not None:
            out["domain_logits"] = levels[0][3]
        return out

    def flatten_outputs(self, outputs: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
        """Concatenate all levels: cls logits Tensor[B, A, C], decoded boxes Tensor[B, A, 4] (xyxy pixels),
        objectness logits Tensor[B, A, 1]; A = sum over levels of H_l * W_l, row-major per level."""
        cls = torch.cat([c.flatten(2).transpose(1, 2) for c in outputs["cls_logits"]], dim=1)  # [B, A, C]
        raw = torch.cat([b.flatten(2).transpose(1, 2) for b in outputs["bbox_pred"]], dim=1)  # [B, A, 4]
        obj = torch.cat([o.flatten(2).transpose(1, 2) for o in outputs["obj_logits"]], dim=1)  # [B, A, 1]
        feat_sizes = [tuple(c.shape[-2:]) for c in outputs["cls_logits"]]
        points, point_strides = level_points(feat_sizes, list(self.strides), device=cls.device)  # [A, 2], [A]
        return cls, decode_yolox_boxes(raw, points, point_strides), obj

    def forward_flat(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``forward`` then ``flatten_outputs``: cls Tensor[B, A, C], bbox Tensor[B, A, 4] xyxy pixels,
        obj Tensor[B, A, 1] over all levels."""
        return self.flatten_outputs(self.forward(x))

    # ---- protocol -------------------------------------------------------------------------------------
    def loss(self, outputs: dict[str, Any], targets: list[dict]) -> dict[str, Tensor]:
        """SimOTA losses (``self.criterion``, a :class:`~detforge.models.criteria.YOLOXCriterion`, box weight 5):
        ``loss``, ``cls_loss``, ``reg_loss`` (unweighted), ``obj_loss``, ``num_pos``, plus ``domain_loss``
        (cross-entropy, added to ``loss``) when the domain head is on and every target has a ``domain``."""
        cls, boxes, obj = self.flatten_outputs(outputs)  # [B, A, C], [B, A, 4], [B, A, 1]
        feat_sizes = [tuple(c.shape[-2:]) for c in outputs["cls_logits"]]
        gt_boxes, gt_labels, gt_mask = pad_targets(targets, device=cls.device)
        losses = self.criterion(cls, boxes, obj[..., 0], feat_sizes, gt_boxes, gt_labels, gt_mask)
        if self.domain_head is not None and targets and all("domain" in t for t in targets):
            domain_target = torch.as_tensor([int(t["domain"]) for t in targets], device=cls.device)
            losses["domain_loss"] = F.cross_entropy(outputs["domain_logits"], domain_target)
            losses["loss"] = losses["loss"] + losses["domain_loss"]
        return losses

    @torch.no_grad()
    def postprocess(self, outputs: dict[str, Any], image_sizes: list[tuple[int, int]]) -> list[dict]:
        cls, boxes, obj = self.flatten_outputs(outputs)
        scores_all = cls.sigmoid() * obj.sigmoid()  # [B, A, C]
        results = []
        for i, (h, w) in enumerate(image_sizes):
            scores, labels = scores_all[i].max(dim=1)  # [A], [A]
            keep = scores > self.score_threshold
            b = boxes[i][keep].clone()  # [K, 4]
            b[:, 0::2] = b[:, 0::2].clamp(0, w)
            b[:, 1::2] = b[:, 1::2].clamp(0, h)
            s, lab = scores[keep], labels[keep]
            kept = batched_nms(b, s, lab, self.nms_threshold)[: self.max_detections]
            det = {"boxes": b[kept], "scores": s[kept], "labels": lab[kept]}
            if self.domain_head is not None:
                det["domain"] = int(outputs["domain_logits"][i].argmax())
            results.append(det)
        return results


def decode_yolox_boxes(raw: Tensor, points: Tensor, point_strides: Tensor) -> Tensor:
    """YOLOX box decoding.

    Args:
        raw: Tensor[B, A, 4], (dx, dy, log w, log h) in units of each location's stride.
        points: Tensor[A, 2], cell centres in pixels.
        point_strides: Tensor[A].

    Returns:
        Tensor[B, A, 4] xyxy pixels: centre = point + d * stride, size = exp(log size) * stride.
    """
    s = point_strides[None, :, None]  # [1, A, 1]
    centre = points[None] + raw[..., :2] * s  # [B, A, 2]
    size = raw[..., 2:].clamp(max=8.0).exp() * s  # [B, A, 2]
    return torch.cat([centre - size / 2, centre + size / 2], dim=-1)
