"""NightVision: a small multi-domain infrared detector (YOLOX-style decoupled heads on a CSP backbone).

Layout: thermal-adaptive stem (per-image thermal normalisation + band mixing for 1 or N bands) -> CSP
backbone (strides 4..32) -> thermal FPN (top-down + lateral, P3/P4/P5) -> one decoupled head per level
(classification, box regression, objectness) -> optional domain-classification head on P5.

Training uses SimOTA assignment (``detforge.assigners.SimOTAAssigner``). Presets on ``NightVisionConfig``
pick widths and class counts for wildlife, humans, vehicles, multi-band (interstellar) imagery and a
multi-domain model with domain tags; ``edge`` is the smallest.

Post-processing is the shared one (``Detector.postprocess`` on ``decode``), plus the ``domain`` of each image
when the domain head is on. The raw ONNX graph returns YOLOX's flat ``cls_logits`` / ``boxes`` (decoded) /
``obj_logits`` (and ``domain_logits``); ``outputs_from_export`` turns them back into ``forward``'s maps.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass, replace
from typing import Any, Unpack

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detforge.boxes import centre_size_to_xyxy, feature_sizes, grid_points, xyxy_to_centre_size
from detforge.models.base import Detector, PostprocessOptions, PostprocessSettings
from detforge.models.criteria import YOLOXCriterion
from detforge.models.edge.common import ConvBNAct, CSPBlock, DepthwiseSeparable, init_from_config
from detforge.targets import pad_targets

__all__ = ["NightVision", "NightVisionConfig", "ThermalDomain", "ThermalStem"]

MAX_LOG_SIZE = 8.0  # clamp on YOLOX's decoded log box size (in strides)


class ThermalDomain(enum.IntEnum):
    """Scene domains the optional domain head classifies (index = class id of the domain head)."""

    Wildlife = 0
    Human = 1
    Interstellar = 2
    Vehicle = 3
    General = 4


@dataclass(frozen=True)
class NightVisionConfig(PostprocessSettings):
    """What to build. ``NightVision(cfg)`` (or ``NightVision.with_config(cfg)``) turns it into a model.

    Attributes:
        num_classes: object classes (no background).
        in_chans: input bands: 1 (thermal), 3 (three-band) or any count for multi-band imagery.
        input_width, input_height: default network input size in pixels.
        widths: backbone channels at strides 4, 8, 16, 32.
        fpn_channels: channels of P3/P4/P5 and of the heads.
        csp_depth: bottlenecks per CSP block.
        domain_head: add the domain-classification head (``ThermalDomain``).
        domain: the domain this model is meant for (informational; tags predictions).
        score_thresh, nms_thresh, pre_nms_topk, max_detections_per_image, nms_method, soft_nms_sigma: the
            post-processing settings (``detforge.models.base.PostprocessSettings``).
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
    _: KW_ONLY  # the post-processing settings (PostprocessSettings), keyword-only; this model's defaults:
    nms_thresh: float = 0.5

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


class NightVision(Detector):
    """Multi-domain thermal detector with the detforge model protocol.

    ``forward(images Tensor[B, in_chans, H, W])`` returns ``cls_logits`` / ``bbox_pred`` / ``obj_logits``
    (lists over P3, P4, P5 of Tensor[B, C | 4 | 1, H_l, W_l]) and ``domain_logits`` (Tensor[B, 5]) when the
    domain head is on. ``bbox_pred`` is YOLOX's (dx, dy, log w, log h) in units of the level's stride.
    ``NightVision(cfg)`` builds from a ``NightVisionConfig``; otherwise the keyword arguments are its fields.
    """

    strides = (8, 16, 32)
    raw_outputs_on_grid = True  # export hook: the raw graph's boxes are decoded on the example's grid
    postprocess_defaults = {"nms_thresh": 0.5}

    def __init__(
        self,
        cfg: NightVisionConfig | None = None,
        /,
        *,
        num_classes: int = 1,
        in_chans: int = 1,
        input_size: tuple[int, int] = (320, 320),
        widths: tuple[int, int, int, int] = (32, 64, 128, 256),
        fpn_channels: int = 96,
        csp_depth: int = 1,
        domain_head: bool = False,
        domain: ThermalDomain = ThermalDomain.General,
        **postprocess: Unpack[PostprocessOptions],
    ) -> None:
        if cfg is not None:
            return init_from_config(self, NightVision.__init__, cfg, NightVisionConfig, locals())
        super().__init__(num_classes, in_chans=in_chans, input_size=input_size, **postprocess)
        self.domain = ThermalDomain(domain)
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
        return cls(cfg)

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
        points, point_strides = grid_points(feat_sizes, self.strides, device=cls.device)  # [A, 2], [A]
        return cls, centre_size_to_xyxy(points, point_strides, raw, max_log_size=MAX_LOG_SIZE), obj

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

    def decode(self, outputs: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """Scores ``sigmoid(cls) * sigmoid(obj)`` (Tensor[B, A, C]) and xyxy boxes (Tensor[B, A, 4])."""
        cls, boxes, obj = self.flatten_outputs(outputs)
        return cls.float().sigmoid() * obj.float().sigmoid(), boxes.float()

    def level_sizes(self, outputs: dict[str, Any]) -> list[int]:
        return [int(c.shape[-2]) * int(c.shape[-1]) for c in outputs["cls_logits"]]

    @torch.no_grad()
    def postprocess(self, outputs: dict[str, Any], image_sizes: Sequence[tuple[int, int]]) -> list[dict]:
        """The shared post-processing, plus ``domain`` (int, a ``ThermalDomain``) per image with the domain
        head."""
        detections = super().postprocess(outputs, image_sizes)
        if self.domain_head is not None:
            for det, logits in zip(detections, outputs["domain_logits"], strict=True):
                det["domain"] = int(logits.argmax())
        return detections

    # ---- export hooks ---------------------------------------------------------------------------------
    def export_raw(self, **inputs: Tensor) -> dict[str, Tensor]:
        """Flat ``cls_logits`` [B, A, C], decoded ``boxes`` [B, A, 4] (xyxy pixels), ``obj_logits`` [B, A, 1]
        and, with the domain head, ``domain_logits`` [B, 5]."""
        outputs = self(inputs["images"])
        cls, boxes, obj = self.flatten_outputs(outputs)
        raw = {"cls_logits": cls, "boxes": boxes, "obj_logits": obj}
        return {**raw, "domain_logits": outputs["domain_logits"]} if self.domain_head is not None else raw

    def outputs_from_export(self, raw: dict[str, Tensor], image_size: tuple[int, int]) -> dict[str, Any]:
        """``forward``'s per-level maps from the raw graph's flat outputs at input ``image_size`` (h, w):
        ``boxes`` re-encoded as (dx, dy, log w, log h) in strides (``xyxy_to_centre_size``)."""
        cls, boxes, obj = (torch.as_tensor(raw[k]) for k in ("cls_logits", "boxes", "obj_logits"))
        sizes = feature_sizes(image_size, self.strides)
        if sum(h * w for h, w in sizes) != cls.shape[1]:
            raise ValueError(
                f"graph output has {cls.shape[1]} cells, but an input of {tuple(image_size)} gives levels {sizes}; "
                "export and evaluate at the same input size"
            )
        points, point_strides = grid_points(sizes, self.strides, device=boxes.device)  # [A, 2], [A]
        # INT8 rounding can flip a box's corners: xyxy_to_centre_size clamps the size at 1e-6
        deltas = xyxy_to_centre_size(points, point_strides, boxes.float())  # [B, A, 4]
        out: dict[str, Any] = {"cls_logits": [], "bbox_pred": [], "obj_logits": []}
        for key, flat in zip(out, (cls, deltas, obj), strict=True):
            for level, (h, w) in zip(flat.split([h * w for h, w in sizes], dim=1), sizes, strict=True):
                out[key].append(
                    level.transpose(1, 2).reshape(level.shape[0], level.shape[2], h, w)
                )  # [B, K, h, w]
        if self.domain_head is not None:
            out["domain_logits"] = torch.as_tensor(raw["domain_logits"])  # [B, 5]
        return out
