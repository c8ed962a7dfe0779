"""Nexus: a dual-pathway general object detector for edge video (~421K parameters at 320 x 320).

- A shared stem (stride 4) feeds two streams: the ventral ("what") stream, deeper and wider, for appearance;
  the dorsal ("where") stream, light and dilated, fed with coordinate channels, for layout. At strides 8, 16
  and 32 both are fused across pathways (concat + 1x1), then merged top-down like an FPN.
- FCOS-style anchor-free heads on the three scales: class logits, a box as distances (l, t, r, b) with a
  log-variance per side (uncertainty), and centerness.
- Object memory: a GRU state per tracked object (``detforge.models.edge.tracker``) keeps identity over frames;
  ``track_frame`` runs detection and tracking on one video frame (``NexusVideo``).

``forward`` / ``loss`` / ``postprocess`` (the shared one, plus ``box_log_var``) are pure and identical in train
and eval mode; video state lives in ``NexusVideo``, outside the network and its ONNX graph.

Nexus once had a predictive-coding gate (a predictor of the next frame's stem features; frames whose stem
matched the prediction reused the previous head outputs). Nothing trained the predictor, and untrained it
never fired on the synthetic sequences, moving or static (sensor noise alone put the surprise at 0.17-0.22,
over the 0.1 threshold) while costing 2% more FLOPs a frame: it was removed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import KW_ONLY, asdict, dataclass
from typing import Any, Unpack

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detforge.boxes import grid_points, ltrb_to_xyxy
from detforge.models.base import Detector, PostprocessOptions, PostprocessSettings
from detforge.models.criteria import FCOSCriterion
from detforge.models.edge.common import ConvBNAct, DepthwiseSeparable, LearnedScale, init_from_config
from detforge.models.edge.nexus_video import NexusVideo
from detforge.models.edge.tracker import TrackMemory
from detforge.targets import pad_targets

__all__ = ["Nexus", "NexusConfig", "nexus_training_step"]

HEAD_KEYS = ("cls_logits", "bbox_pred", "bbox_log_var", "centerness")


@dataclass(frozen=True)
class NexusConfig(PostprocessSettings):
    """What to build; ``Nexus(cfg)`` (or ``Nexus.with_config(cfg)``) turns it into a model.

    Attributes:
        input_width, input_height: default network input size in pixels (multiples of 32).
        num_classes: object classes (no background).
        in_chans: image channels.
        memory_hidden_size: GRU hidden size of each tracked object's memory.
        score_thresh, nms_thresh, pre_nms_topk, max_detections_per_image, nms_method, soft_nms_sigma: the
            post-processing settings (``detforge.models.base.PostprocessSettings``).
    """

    input_width: int = 320
    input_height: int = 320
    num_classes: int = 20
    in_chans: int = 3
    memory_hidden_size: int = 64
    _: KW_ONLY  # the post-processing settings (PostprocessSettings), keyword-only; this model's defaults:
    score_thresh: float = 0.3
    nms_thresh: float = 0.5


class NexusStreams(nn.Module):
    """Stem + ventral and dorsal streams + cross-pathway fusion + top-down merge.

    ``forward(stem Tensor[B, 24, H/4, W/4]) -> [P3, P4, P5]``, each Tensor[B, channels, H/s, W/s].
    """

    def __init__(
        self,
        stem_channels: int,
        channels: int,
        ventral_widths: tuple[int, int, int] = (64, 128, 320),
        dorsal_widths: tuple[int, int, int] = (32, 64, 128),
    ) -> None:
        super().__init__()
        v, d = ventral_widths, dorsal_widths  # channels at strides 8, 16, 32
        ds = DepthwiseSeparable
        self.ventral = nn.ModuleList([
            nn.Sequential(ds(stem_channels, v[0], stride=2), ds(v[0], v[0])),
            nn.Sequential(ds(v[0], v[1], stride=2), ds(v[1], v[1]), ds(v[1], v[1])),
            nn.Sequential(ds(v[1], v[2], stride=2), ds(v[2], v[2])),
        ])  # fmt: skip
        self.dorsal = nn.ModuleList([
            nn.Sequential(ds(stem_channels + 2, d[0], stride=2), ds(d[0], d[0], dilation=2)),
            nn.Sequential(ds(d[0], d[1], stride=2), ds(d[1], d[1], dilation=2)),
            nn.Sequential(ds(d[1], d[2], stride=2)),
        ])  # fmt: skip
        self.fuse = nn.ModuleList(
            ConvBNAct(vc + dc, channels, kernel_size=1) for vc, dc in zip(v, d, strict=True)
        )
        self.smooth = nn.ModuleList(DepthwiseSeparable(channels, channels) for _ in range(3))

    @staticmethod
    def _coords(x: Tensor) -> Tensor:
        """Normalised (x, y) coordinate channels in [-1, 1], Tensor[B, 2, H, W]."""
        # A linear ramp is exactly the bilinear interpolation of its corner values, so the map is built from
        # a 2 x 2 constant: an exported graph stores 32 bytes instead of a [2, H, W] table.
        b, _, h, w = x.shape
        corners = torch.tensor([[[-1.0, 1.0], [-1.0, 1.0]], [[-1.0, -1.0], [1.0, 1.0]]], device=x.device)
        grid = F.interpolate(corners[None].to(x.dtype), size=(h, w), mode="bilinear", align_corners=True)
        return grid.expand(b, 2, h, w)  # [B, 2, H, W]: x then y

    def forward(self, stem: Tensor) -> list[Tensor]:
        v, d = stem, torch.cat([stem, self._coords(stem)], dim=1)  # [B, S, H/4, W/4], [B, S + 2, H/4, W/4]
        fused = []
        for ventral, dorsal, fuse in zip(self.ventral, self.dorsal, self.fuse, strict=True):
            v, d = ventral(v), dorsal(d)
            fused.append(fuse(torch.cat([v, d], dim=1)))  # [B, channels, H/s, W/s]
        p3, p4, p5 = fused
        p4 = p4 + F.interpolate(p5, size=p4.shape[-2:], mode="nearest")
        p3 = p3 + F.interpolate(p4, size=p3.shape[-2:], mode="nearest")
        return [smooth(p) for smooth, p in zip(self.smooth, (p3, p4, p5), strict=True)]


def _shared_head_block(channels: int) -> nn.Sequential:
    """Separable conv (depthwise 3x3 then pointwise 1x1) + GroupNorm (up to 16 groups) + ReLU, for the head
    shared by all levels (EfficientDet's head block).

    GroupNorm, not BatchNorm: one BatchNorm shared by P3, P4 and P5 would train on each level's own batch
    statistics but infer with running statistics mixed over the levels, which ruins eval-mode detections.
    One norm per block, not one per conv: GroupNorm cannot fold into the convs of an exported graph, and on a
    CPU each one costs about as much as a conv.
    """
    groups = math.gcd(channels, 16)
    return nn.Sequential(
        nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False),
        nn.Conv2d(channels, channels, 1, bias=False),
        nn.GroupNorm(groups, channels),
        nn.ReLU(inplace=True),
    )


class NexusHead(nn.Module):
    """FCOS head shared by all levels: class logits, (l, t, r, b) mean and log-variance, centerness.

    ``forward(feat Tensor[B, ch, H, W], level, stride)`` -> cls Tensor[B, C, H, W], ltrb Tensor[B, 4, H, W]
    (pixels, > 0), ltrb log-variance Tensor[B, 4, H, W] (in units of stride^2), centerness Tensor[B, 1, H, W].
    """

    def __init__(self, channels: int, num_classes: int, num_levels: int = 3) -> None:
        super().__init__()
        self.cls_tower = nn.Sequential(*(_shared_head_block(channels) for _ in range(2)))
        self.reg_tower = nn.Sequential(*(_shared_head_block(channels) for _ in range(2)))
        self.cls_out = nn.Conv2d(channels, num_classes, 3, padding=1)
        self.bbox_out = nn.Conv2d(channels, 4, 3, padding=1)
        self.log_var_out = nn.Conv2d(channels, 4, 1)
        self.centerness_out = nn.Conv2d(channels, 1, 3, padding=1)
        self.scales = nn.ModuleList(LearnedScale(1.0) for _ in range(num_levels))
        nn.init.constant_(self.cls_out.bias, -4.59)  # sigmoid 0.01 prior
        nn.init.zeros_(self.log_var_out.weight)
        nn.init.zeros_(self.log_var_out.bias)

    def forward(self, feat: Tensor, level: int, stride: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        reg = self.reg_tower(feat)
        ltrb = self.scales[level](self.bbox_out(reg)).clamp(max=10.0).exp() * stride  # [B, 4, H, W]
        return self.cls_out(self.cls_tower(feat)), ltrb, self.log_var_out(reg), self.centerness_out(reg)


def _drop_removed_predictor(module, state_dict, prefix, *args) -> None:
    """Checkpoints from before the predictive-coding gate's removal load: their ``predictor.*`` weights go."""
    for key in [k for k in state_dict if k.startswith(prefix + "predictor.")]:
        del state_dict[key]


class Nexus(Detector):
    """Dual-pathway FCOS detector with box uncertainty and per-object GRU memory.

    Protocol: ``forward(images Tensor[B, in_chans, H, W])`` -> dict with lists over the three levels of
    ``cls_logits`` Tensor[B, C, H_l, W_l], ``bbox_pred`` Tensor[B, 4, H_l, W_l] (l, t, r, b pixels),
    ``bbox_log_var`` Tensor[B, 4, H_l, W_l], ``centerness`` Tensor[B, 1, H_l, W_l]; ``loss``; ``postprocess``.
    Video: ``track_frame(frame)`` (``NexusVideo``), ``reset()``. ``Nexus(cfg)`` builds from a ``NexusConfig``.
    """

    strides = (8, 16, 32)
    _levels = ("p3", "p4", "p5")  # export names of the levels
    stem_channels = 24
    raw_outputs_on_grid = False  # export hook: raw maps, no location grid inside
    postprocess_defaults = {"score_thresh": 0.3, "nms_thresh": 0.5}

    def __init__(
        self,
        cfg: NexusConfig | None = None,
        /,
        *,
        num_classes: int = 20,
        in_chans: int = 3,
        input_size: tuple[int, int] = (320, 320),
        channels: int = 96,
        memory_hidden_size: int = 64,
        **postprocess: Unpack[PostprocessOptions],
    ) -> None:
        if cfg is not None:
            return init_from_config(self, Nexus.__init__, cfg, NexusConfig, locals())
        super().__init__(num_classes, in_chans=in_chans, input_size=input_size, **postprocess)
        self.stem = nn.Sequential(
            ConvBNAct(in_chans, 16, stride=2), DepthwiseSeparable(16, self.stem_channels, stride=2)
        )  # stride 4
        self.streams = NexusStreams(self.stem_channels, channels)
        self.head = NexusHead(channels, num_classes, num_levels=len(self.strides))
        self.memory = TrackMemory(appearance_size=channels, hidden_size=memory_hidden_size)
        self.criterion = FCOSCriterion(self.strides, uncertainty_weight=0.5)  # parameter-free
        self._video = None
        self.register_load_state_dict_pre_hook(_drop_removed_predictor)

    @classmethod
    def with_config(cls, cfg: NexusConfig) -> Nexus:
        return cls(cfg)

    # ---- network -------------------------------------------------------------------------------------
    def _check(self, images: Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != self.in_chans:
            raise ValueError(
                f"Nexus expects images Tensor[B, {self.in_chans}, H, W], got {tuple(images.shape)}"
            )

    def heads_from_stem(self, stem: Tensor) -> dict[str, Any]:
        """Everything after the stem: streams, fusion and heads."""
        out: dict[str, Any] = {k: [] for k in HEAD_KEYS}
        feats = self.streams(stem)
        for level, (feat, stride) in enumerate(zip(feats, self.strides, strict=True)):
            for key, value in zip(HEAD_KEYS, self.head(feat, level, stride), strict=True):
                out[key].append(value)  # cls_logits, bbox_pred, bbox_log_var, centerness
        out["p3"] = feats[0]  # [B, channels, H/8, W/8], appearance features for the object memory
        return out

    def forward(self, images: Tensor) -> dict[str, Any]:
        self._check(images)
        return self.heads_from_stem(self.stem(images))

    def forward_train(self, frame: Tensor) -> list[dict[str, Tensor]]:
        """Per scale (strides 8, 16, 32): ``cls_logits`` [B, C, H, W], ``bbox_pred`` [B, 4, H, W], ``bbox_log_var``
        [B, 4, H, W], ``centerness`` [B, 1, H, W]; ``frame`` is Tensor[B, C, H, W] or [C, H, W]."""
        out = self.forward(frame if frame.ndim == 4 else frame[None])
        return [{k: out[k][i] for k in HEAD_KEYS} for i in range(len(self.strides))]

    # ---- protocol -------------------------------------------------------------------------------------
    def flatten_outputs(self, outputs: dict[str, Any]) -> dict[str, Tensor]:
        """All levels concatenated: cls [B, P, C], ltrb [B, P, 4], log_var [B, P, 4], centerness [B, P],
        points [P, 2], point_strides [P]."""
        flat = {
            k: torch.cat([t.flatten(2).transpose(1, 2) for t in outputs[k]], dim=1)  # [B, P, *]
            for k in HEAD_KEYS
        }
        feat_sizes = [tuple(c.shape[-2:]) for c in outputs["cls_logits"]]
        flat["centerness"] = flat["centerness"].squeeze(-1)  # [B, P]
        flat["points"], flat["point_strides"] = grid_points(
            feat_sizes, self.strides, device=flat["cls_logits"].device
        )
        flat["feat_sizes"] = feat_sizes
        return flat

    def loss(self, outputs: dict[str, Any], targets: list[dict]) -> dict[str, Tensor]:
        """FCOS losses plus the box-uncertainty term (``self.criterion``, a
        :class:`~detforge.models.criteria.FCOSCriterion`): ``loss``, ``cls_loss``, ``reg_loss``,
        ``centerness_loss``, ``uncertainty_loss`` and ``num_pos``."""
        flat = self.flatten_outputs(outputs)
        gt_boxes, gt_labels, gt_mask = pad_targets(targets, device=flat["cls_logits"].device)
        return self.criterion(
            flat["cls_logits"],  # [B, P, C]
            flat["bbox_pred"],  # [B, P, 4]
            flat["centerness"],  # [B, P]
            flat["feat_sizes"],
            gt_boxes,
            gt_labels,
            gt_mask,
            box_log_var=flat["bbox_log_var"],  # [B, P, 4]
        )

    def decode(self, outputs: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """Scores ``sqrt(sigmoid(cls) * sigmoid(centerness))`` (Tensor[B, P, C]) and xyxy boxes (Tensor[B, P, 4])
        of every location of the three levels."""
        flat = self.flatten_outputs(outputs)
        scores = (
            flat["cls_logits"].float().sigmoid() * flat["centerness"].float().sigmoid()[..., None]
        ).sqrt()
        return scores, ltrb_to_xyxy(flat["points"], flat["bbox_pred"].float())  # [B, P, C], [B, P, 4]

    def level_sizes(self, outputs: dict[str, Any]) -> list[int]:
        return [int(c.shape[-2]) * int(c.shape[-1]) for c in outputs["cls_logits"]]

    @torch.no_grad()
    def postprocess(self, outputs: dict[str, Any], image_sizes: Sequence[tuple[int, int]]) -> list[dict]:
        """The shared post-processing (``Detector.postprocess``) plus ``box_log_var`` [K, 4] per detection
        (log-variance of l, t, r, b in stride units)."""
        from detforge.postprocess import detect

        scores, boxes = self.decode(outputs)
        log_var = torch.cat(
            [t.flatten(2).transpose(1, 2) for t in outputs["bbox_log_var"]], dim=1
        )  # [B, P, 4]
        settings = asdict(self.postprocess_settings)
        sizes = self.level_sizes(outputs)
        return detect(scores, boxes, sizes, image_sizes, **settings, extras={"box_log_var": log_var})

    # ---- export hooks ---------------------------------------------------------------------------------
    def export_raw(self, **inputs: Tensor) -> dict[str, Tensor]:
        """``<key>_p3 .. <key>_p5`` for the four head maps (``HEAD_KEYS``)."""
        outputs = self(inputs["images"])
        return {f"{k}_{lv}": t for k in HEAD_KEYS for lv, t in zip(self._levels, outputs[k], strict=True)}

    def outputs_from_export(self, raw: dict[str, Tensor], image_size: tuple[int, int]) -> dict[str, Any]:
        """``forward``'s per-level lists from a raw graph's ``<key>_p<level>`` outputs."""
        missing = [f"{k}_{lv}" for k in HEAD_KEYS for lv in self._levels if f"{k}_{lv}" not in raw]
        if missing:
            raise ValueError(f"Nexus graph outputs lack {missing}")
        return {k: [torch.as_tensor(raw[f"{k}_{lv}"]) for lv in self._levels] for k in HEAD_KEYS}

    # ---- video ----------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget the video state (the tracks); call between videos."""
        self._video = None

    @torch.no_grad()
    def track_frame(self, frame: Tensor) -> dict[str, Tensor]:
        """Detect and track objects in one video frame (Tensor[C, H, W] or [1, C, H, W], float in [0, 1]).

        Returns the tracker protocol's dict (:mod:`detforge.tracking.base`): ``boxes`` Tensor[M, 4] xyxy
        pixels, ``scores`` [M], ``labels`` [M] int64, ``track_ids`` [M] int64, ``detection_indices`` [M],
        plus ``box_log_var`` Tensor[M, 4]. Uses eval mode for the call; ``reset()`` between videos.
        """
        if self._video is None:
            self._video = NexusVideo(self)
        return self._video.step(frame)

    @property
    def video(self):
        """The current ``NexusVideo`` (its tracker), or None before the first ``track_frame``."""
        return self._video


def nexus_training_step(
    model: Nexus, frame: Tensor, gt_boxes: Tensor, gt_classes: Tensor, optimizer: torch.optim.Optimizer
) -> float:
    """One optimisation step on one frame: forward, FCOS assignment on the three scales, focal + GIoU +
    uncertainty + centerness losses, backward, optimizer step.

    Args:
        frame: Tensor[C, H, W] (or [1, C, H, W]) float in [0, 1].
        gt_boxes: Tensor[N, 4] xyxy pixels (N may be 0). gt_classes: Tensor[N] int64.

    Returns:
        The total loss as a float.
    """
    model.train()
    x = frame if frame.ndim == 4 else frame[None]
    targets = [{"boxes": gt_boxes.reshape(-1, 4).float(), "labels": gt_classes.reshape(-1).long()}]
    losses = model.loss(model(x), targets)
    optimizer.zero_grad()
    losses["loss"].backward()
    optimizer.step()
    return float(losses["loss"].detach())
