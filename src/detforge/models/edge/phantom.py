"""Phantom: an event-driven face detector for video on small devices (128 x 128; ~117K parameters: a 103K
network and a 14K track memory).

The network is a single-scale (stride 4) fully convolutional face detector: a face-probability map and
(l, t, r, b) distances per cell. Because every output cell depends only on a small image neighbourhood, video
frames can be processed sparsely: ``PhantomVideo`` turns frame differences into pseudo-events, runs the
network only on event-active regions and pastes the result into cached output maps, refreshing the whole map
every ``backbone_refresh_interval`` frames. Faces are tracked with a GRU state per face (motion prediction),
get track ids from temporal continuity, and gain confidence the longer they are tracked.

``forward`` / ``loss`` / ``postprocess`` are pure and identical in train and eval mode; ``postprocess`` is the
shared one (``Detector.postprocess`` on ``decode``). The raw ONNX graph (``detforge.export``) takes any input
height and width (multiples of 4): its outputs are the two maps, with no location grid inside.
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass
from typing import Unpack

import torch
from torch import Tensor, nn

from detforge.boxes import centre_size_to_xyxy, grid_points
from detforge.models.base import Detector, PostprocessOptions, PostprocessSettings
from detforge.models.criteria import SingleScaleCriterion
from detforge.models.edge.common import ConvBNAct, DepthwiseSeparable, init_from_config
from detforge.models.edge.tracker import TrackMemory
from detforge.targets import pad_targets

__all__ = ["Phantom", "PhantomConfig", "decode_face_boxes", "phantom_training_step"]

MAX_LOG_SIZE = 8.0  # clamp on the decoded log box size (in cells): e^8 cells is far past any frame


@dataclass(frozen=True)
class PhantomConfig(PostprocessSettings):
    """What to build; ``Phantom(cfg)`` (or ``Phantom.with_config(cfg)``) turns it into a model.

    Attributes:
        input_width, input_height: default network input size (multiples of 4).
        backbone_refresh_interval: in video, every this many frames the whole frame is recomputed.
        tracker_hidden_size: GRU hidden size of each face track.
        detection_threshold: accumulated track confidence a face needs to be reported in video.
        in_chans: image channels.
        event_threshold: per-pixel absolute frame difference (0..1) that counts as an event.
        score_thresh, nms_thresh, pre_nms_topk, max_detections_per_image, nms_method, soft_nms_sigma: the
            post-processing settings (``detforge.models.base.PostprocessSettings``); video uses ``nms_thresh`` too.
    """

    input_width: int = 128
    input_height: int = 128
    backbone_refresh_interval: int = 30
    tracker_hidden_size: int = 64
    detection_threshold: float = 0.5
    in_chans: int = 3
    event_threshold: float = 0.08
    _: KW_ONLY  # the post-processing settings (PostprocessSettings), keyword-only; this model's defaults:
    nms_thresh: float = 0.3
    max_detections_per_image: int = 50


class PhantomNet(nn.Module):
    """Backbone + face head: ``forward(x Tensor[B, C, H, W]) -> (face_cls Tensor[B, 1, H/4, W/4] logits,
    face_bbox Tensor[B, 4, H/4, W/4] (dx, dy, log w, log h) in cells, as ``SingleScaleAssigner``
    encodes)``."""

    stride = 4

    def __init__(self, in_chans: int = 3) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            ConvBNAct(in_chans, 16, stride=2),  # [B, 16, H/2, W/2]
            DepthwiseSeparable(16, 48, stride=2),  # [B, 48, H/4, W/4]
            DepthwiseSeparable(48, 96),
            DepthwiseSeparable(96, 128, dilation=2),
            DepthwiseSeparable(128, 160, dilation=2),
            DepthwiseSeparable(160, 160, dilation=3),
        )
        self.cls_branch = DepthwiseSeparable(160, 88)
        self.reg_branch = DepthwiseSeparable(160, 88)
        self.cls_out = nn.Conv2d(88, 1, 1)
        self.bbox_out = nn.Conv2d(88, 4, 1)
        nn.init.constant_(self.cls_out.bias, -4.59)  # sigmoid 0.01 prior

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        feat = self.backbone(x)  # [B, 160, H/4, W/4]
        return self.cls_out(self.cls_branch(feat)), self.bbox_out(self.reg_branch(feat))


class Phantom(Detector):
    """Single-class ("face") detector with the detforge model protocol plus a sparse video API.

    ``forward(images Tensor[B, C, H, W])`` -> ``face_cls`` Tensor[B, 1, H/4, W/4] (logits) and ``face_bbox``
    Tensor[B, 4, H/4, W/4] (dx, dy, log w, log h): centre = (cell + d) * 4, size = exp(log size) * 4.
    ``Phantom(cfg)`` builds from a ``PhantomConfig``; otherwise the keyword arguments are its fields.
    """

    stride = 4
    raw_outputs_on_grid = False  # export hook: the raw graph takes any H, W (video crops)
    postprocess_defaults = {"nms_thresh": 0.3, "max_detections_per_image": 50}

    def __init__(
        self,
        cfg: PhantomConfig | None = None,
        /,
        *,
        in_chans: int = 3,
        input_size: tuple[int, int] = (128, 128),
        backbone_refresh_interval: int = 30,
        tracker_hidden_size: int = 64,
        detection_threshold: float = 0.5,
        event_threshold: float = 0.08,
        **postprocess: Unpack[PostprocessOptions],
    ) -> None:
        if cfg is not None:
            return init_from_config(self, Phantom.__init__, cfg, PhantomConfig, locals())
        super().__init__(1, in_chans=in_chans, input_size=input_size, **postprocess)
        if backbone_refresh_interval < 1:
            raise ValueError(f"backbone_refresh_interval must be >= 1, got {backbone_refresh_interval}")
        if not 0.0 < detection_threshold < 1.0:
            raise ValueError(f"detection_threshold must be in (0, 1), got {detection_threshold}")
        self.class_names = ("face",)
        self.backbone_refresh_interval = backbone_refresh_interval
        self.detection_threshold = detection_threshold
        self.event_threshold = event_threshold
        self.net = PhantomNet(in_chans)
        self.memory = TrackMemory(appearance_size=0, hidden_size=tracker_hidden_size)
        self.criterion = SingleScaleCriterion(self.stride)  # parameter-free
        self._video = None

    @classmethod
    def with_config(cls, cfg: PhantomConfig) -> Phantom:
        return cls(cfg)

    # ---- protocol -------------------------------------------------------------------------------------
    def forward(self, images: Tensor) -> dict[str, Tensor]:
        if images.ndim != 4 or images.shape[1] != self.in_chans:
            raise ValueError(
                f"Phantom expects images Tensor[B, {self.in_chans}, H, W], got {tuple(images.shape)}"
            )
        cls, ltrb = self.net(images)
        return {"face_cls": cls, "face_bbox": ltrb}

    def forward_train(self, frame: Tensor) -> tuple[Tensor, Tensor]:
        """face_cls Tensor[B, 1, H/4, W/4] logits and face_bbox Tensor[B, 4, H/4, W/4] for a frame
        Tensor[C, H, W] (B = 1) or a batch Tensor[B, C, H, W]."""
        out = self.forward(frame if frame.ndim == 4 else frame[None])
        return out["face_cls"], out["face_bbox"]

    def loss(self, outputs: dict[str, Tensor], targets: list[dict]) -> dict[str, Tensor]:
        """Focal loss on the face map and smooth L1 on the centre cells' deltas (``self.criterion``, a
        :class:`~detforge.models.criteria.SingleScaleCriterion`): ``loss``, ``cls_loss``, ``reg_loss`` and
        ``num_pos``; every target box is a face."""
        gt_boxes, _, gt_mask = pad_targets(targets, device=outputs["face_cls"].device)
        return self.criterion(outputs["face_cls"], outputs["face_bbox"], gt_boxes, gt_mask)

    def decode(self, outputs: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Face scores (Tensor[B, P, 1], P = H/4 * W/4) and xyxy boxes (Tensor[B, P, 4]) of every cell."""
        cls = outputs["face_cls"]  # [B, 1, h, w]
        scores = cls.float().flatten(2).transpose(1, 2).sigmoid()  # [B, P, 1]
        return scores, decode_face_boxes(outputs["face_bbox"].float(), self.stride)

    def level_sizes(self, outputs: dict[str, Tensor]) -> list[int]:
        h, w = outputs["face_cls"].shape[-2:]
        return [int(h) * int(w)]

    # ---- video ----------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget the video state (cached maps, tracks); call between videos."""
        self._video = None

    @property
    def video(self):
        """The current ``PhantomVideo`` (profile counters, tracker), or None before the first frame."""
        return self._video

    def video_runner(self, network=None):
        """A fresh ``PhantomVideo`` on this model's settings; ``network`` defaults to this model in eval mode
        (pass an onnxruntime-backed callable from ``detforge.models.edge.onnx`` to run the exported graph)."""
        from detforge.models.edge.phantom_video import PhantomVideo, torch_network

        return PhantomVideo(
            network or torch_network(self.net),
            memory=self.memory,
            refresh_interval=self.backbone_refresh_interval,
            event_threshold=self.event_threshold,
            detection_threshold=self.detection_threshold,
            nms_thresh=self.nms_thresh,
        )

    @torch.no_grad()
    def track_frame(self, frame: Tensor) -> dict[str, Tensor]:
        """Detect and track faces in one video frame (Tensor[C, H, W] or [1, C, H, W], float in [0, 1]).

        Returns the tracker protocol's dict (:mod:`detforge.tracking.base`): ``boxes`` Tensor[M, 4] xyxy
        pixels, ``scores`` [M] (each face's confidence accumulated over its track), ``labels`` [M] (0),
        ``track_ids`` [M] int64, ``detection_indices`` [M], on the frame's device; ``reset()`` between videos.
        """
        if self._video is None:
            self._video = self.video_runner()
        x = frame[0] if frame.ndim == 4 else frame
        tracks = self._video.step(x.detach().cpu().float().numpy())
        return {k: v.to(frame.device) for k, v in tracks.items()}


def decode_face_boxes(deltas: Tensor, stride: int) -> Tensor:
    """Phantom's ``face_bbox`` map (Tensor[B, 4, h, w], (dx, dy, log w, log h) from each cell's top-left
    corner, in cells) -> xyxy pixels of every cell (Tensor[B, h * w, 4], row-major)."""
    h, w = deltas.shape[-2:]
    corners, strides = grid_points([(h, w)], [stride], device=deltas.device, dtype=deltas.dtype, offset=0.0)
    flat = deltas.flatten(2).transpose(1, 2)  # [B, P, 4]
    return centre_size_to_xyxy(corners, strides, flat, max_log_size=MAX_LOG_SIZE)


def phantom_training_step(
    model: Phantom, frame: Tensor, face_boxes: Tensor, optimizer: torch.optim.Optimizer
) -> float:
    """One optimisation step on one frame.

    Args:
        frame: Tensor[C, H, W] (or [1, C, H, W]) float in [0, 1].
        face_boxes: Tensor[N, 4] xyxy pixels (N may be 0).

    Returns:
        The total loss as a float.
    """
    model.train()
    x = frame if frame.ndim == 4 else frame[None]
    targets = [
        {
            "boxes": face_boxes.reshape(-1, 4).float(),
            "labels": torch.zeros(len(face_boxes), dtype=torch.int64),
        }
    ]
    losses = model.loss(model(x), targets)
    optimizer.zero_grad()
    losses["loss"].backward()
    optimizer.step()
    return float(losses["loss"].detach())
