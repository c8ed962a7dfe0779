"""SSD (Liu et al. 2016) in its SSDlite form (MobileNetV2 / V3 papers): one-stage, anchor-based, softmax
classes with an internal background, hard-negative mining; torchvision's ``SSD`` with ``SSDLiteHead``.

``forward(images)`` returns the raw head tensors (``cls_logits`` Tensor[B, A, C + 1], background first, and
``bbox_regression`` Tensor[B, A, 4]) plus the feature-map sizes and the batch's (h, w), from which the
default boxes follow; ``loss`` matches and mines the whole batch at once (:mod:`detforge.models.ssd.loss`) and
``postprocess`` keeps the best boxes per image and class (:mod:`detforge.models.ssd.detect`). The forward
takes any input size; torchvision's fixed 320 x 320 resize is :attr:`~detforge.models.base.Detector.preprocess`
(what ``predict`` applies) for the COCO weights.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Unpack

import torch
from torch import Tensor

from detforge.boxes import AnchorBoxCoder
from detforge.models.base import ChannelsLast, Detector, PostprocessOptions
from detforge.models.criteria.common import check_labels
from detforge.models.faster_rcnn.detect import to_padded, to_per_image
from detforge.models.ssd.anchors import DefaultBoxes
from detforge.models.ssd.detect import detections_per_class
from detforge.models.ssd.extractor import MobileNetName, SSDLiteExtractor
from detforge.models.ssd.head import SSDLiteHead
from detforge.models.ssd.loss import match_default_boxes, ssd_loss
from detforge.targets import pad_targets

__all__ = ["SSD"]


class SSD(ChannelsLast, Detector):
    """SSDlite: MobileNetV3 body tapped at C4 + four extra levels, a depthwise prediction head per level.

    Args:
        num_classes: object classes (labels 0..C-1; the background is column 0 of ``cls_logits``).
        backbone: the MobileNetV3 variant ("mobilenet_v3_large" or "mobilenet_v3_small").
        reduced_tail: halve the last stage's channels (None: True unless ``pretrained``, torchvision's rule).
        width_mult: MobileNetV3 width multiplier.
        pretrained: a torchvision ImageNet checkpoint of the variant for the body (with ``reduced_tail``
            False, as torchvision's files are).
        aspect_ratios: aspect ratios of the default boxes of each of the 6 levels (2 + 2 x ratios per
            location); min_ratio, max_ratio: the first and last level's box scale relative to the image side;
            clip_default_boxes: clip the relative box sizes to [0, 1].
        background_prior: the background probability the class layers start at (their background bias;
            RetinaNet's prior-probability initialisation for a softmax, so that a model fresh from
            initialisation scores every class about 1e-4, below the threshold, instead of exactly 1 / (C + 1)
            everywhere); None: torchvision's zero biases. The weights are torchvision's SSDlite initialisation
            (normal, std 0.03) either way.
        iou_thresh: default boxes matching a ground-truth box with IoU >= this are positives (and each box's
            best default box is, whatever the IoU).
        neg_to_pos_ratio: hard negatives per positive in the classification loss.
        box_weights: the box coder's (wx, wy, ww, wh).
        in_chans, input_size: image channels and the size the model is meant to run at.
        normalize: normalise [0, 1] images with ``mean`` / ``std`` inside ``forward`` (0.5: to [-1, 1]).
        channels_last: run the convolutions in channels-last memory format.
        score_thresh, nms_thresh, pre_nms_topk (candidates per image and class), max_detections_per_image,
            nms_method, soft_nms_sigma: post-processing (torchvision's SSDlite: 0.001, 0.55, 300, 300).
    """

    postprocess_defaults = {
        "score_thresh": 0.001,
        "nms_thresh": 0.55,
        "pre_nms_topk": 300,
        "max_detections_per_image": 300,
    }

    def __init__(
        self,
        num_classes: int = 90,
        backbone: MobileNetName = "mobilenet_v3_large",
        reduced_tail: bool | None = None,
        width_mult: float = 1.0,
        pretrained: str | None = None,
        aspect_ratios: Sequence[Sequence[float]] = ((2, 3),) * 6,
        min_ratio: float = 0.2,
        max_ratio: float = 0.95,
        clip_default_boxes: bool = True,
        background_prior: float | None = 0.99,
        iou_thresh: float = 0.5,
        neg_to_pos_ratio: float = 3.0,
        box_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0),
        in_chans: int = 3,
        input_size: tuple[int, int] = (320, 320),
        normalize: bool = True,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
        channels_last: bool = False,
        **postprocess: Unpack[PostprocessOptions],
    ) -> None:
        super().__init__(num_classes, in_chans=in_chans, input_size=input_size, **postprocess)
        if not 0.0 < iou_thresh <= 1.0:
            raise ValueError(f"iou_thresh must be in (0, 1], got {iou_thresh}")
        if neg_to_pos_ratio < 0:
            raise ValueError(f"neg_to_pos_ratio must be >= 0, got {neg_to_pos_ratio}")
        if pretrained is not None and not os.path.isfile(pretrained):
            raise FileNotFoundError(
                f"pretrained: no file {pretrained!r} (a torchvision MobileNetV3 checkpoint)"
            )
        tail = pretrained is None if reduced_tail is None else bool(reduced_tail)
        self.backbone = SSDLiteExtractor(backbone, tail, width_mult, in_chans, pretrained)
        self.default_boxes = DefaultBoxes(aspect_ratios, min_ratio, max_ratio, clip=clip_default_boxes)
        num_maps = len(self.backbone.out_channels)
        if len(self.default_boxes.sizes) != num_maps:
            raise ValueError(
                f"aspect_ratios needs one entry per feature map ({num_maps}), got {len(aspect_ratios)}"
            )
        self.head = SSDLiteHead(
            self.backbone.out_channels,
            self.default_boxes.num_anchors_per_location(),
            num_classes + 1,
            background_prior,
        )
        self.box_coder = AnchorBoxCoder(tuple(box_weights))
        self.iou_thresh = float(iou_thresh)
        self.neg_to_pos_ratio = float(neg_to_pos_ratio)
        self.normalize = bool(normalize)
        stats = [list(mean), list(std)]
        if any(len(s) != in_chans for s in stats):  # one value for every channel (grayscale from RGB stats)
            stats = [[sum(s) / len(s)] * in_chans for s in stats]
        self.register_buffer("mean", torch.tensor(stats[0]).reshape(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(stats[1]).reshape(1, -1, 1, 1), persistent=False)
        self.channels_last = bool(channels_last)
        self.apply_memory_format()

    # ------------------------------------------------------------------ forward
    def forward(self, images: Tensor) -> dict[str, Any]:
        """Raw outputs for ``images`` (Tensor[B, C, H, W] in [0, 1]): ``cls_logits`` (Tensor[B, A, C + 1]),
        ``bbox_regression`` (Tensor[B, A, 4]), ``feat_sizes`` ((h, w) of each map) and ``image_size``."""
        x = (images - self.mean) / self.std if self.normalize else images
        maps = self.backbone(self.in_memory_format(x))
        cls_logits, bbox_regression = self.head(maps)
        return {
            "cls_logits": cls_logits,  # [B, A, C + 1]
            "bbox_regression": bbox_regression,  # [B, A, 4]
            "feat_sizes": [(int(m.shape[-2]), int(m.shape[-1])) for m in maps],
            "image_size": (int(images.shape[-2]), int(images.shape[-1])),
        }

    def anchors(self, outputs: dict[str, Any]) -> Tensor:
        """The default boxes of ``outputs`` (Tensor[A, 4] xyxy pixels of the batch tensor)."""
        device = outputs["cls_logits"].device
        return self.default_boxes.boxes(outputs["feat_sizes"], outputs["image_size"], device)

    def level_sizes(self, outputs: dict[str, Any]) -> list[int]:
        """Default boxes per level (h x w x boxes per location)."""
        per_location = self.default_boxes.num_anchors_per_location()
        return [int(h) * int(w) * a for (h, w), a in zip(outputs["feat_sizes"], per_location)]

    def class_layers(self) -> dict[str, tuple[int, int, int]]:
        """The class layers (each level's last class conv): per default box of a location, the background
        row then one row per class, (boxes per location, 1, 1)."""
        per_location = self.default_boxes.num_anchors_per_location()
        return {
            f"head.cls_blocks.{level}.1.{name}": (boxes, 1, 1)
            for level, boxes in enumerate(per_location)
            for name in ("weight", "bias")
        }

    # ------------------------------------------------------------------ training
    def loss(self, outputs: dict[str, Any], targets: list[dict]) -> dict[str, Tensor]:
        """``loss`` = ``bbox_regression`` + ``classification`` (torchvision's names), and ``num_pos``."""
        anchors = self.anchors(outputs)
        gt_boxes, gt_labels, gt_mask = pad_targets(targets, anchors.device)  # [B, G, 4], [B, G], [B, G]
        check_labels(gt_labels, gt_mask, self.num_classes)
        matched = match_default_boxes(anchors, gt_boxes, gt_mask, self.iou_thresh)  # [B, A]
        return ssd_loss(
            outputs["cls_logits"], outputs["bbox_regression"], anchors, matched, gt_boxes, gt_labels,
            self.box_coder, self.neg_to_pos_ratio,
        )  # fmt: skip

    # ------------------------------------------------------------------ detections
    def decode(self, outputs: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """Class probabilities without the background (Tensor[B, A, C], softmax over background + classes)
        and decoded xyxy boxes (Tensor[B, A, 4])."""
        scores = outputs["cls_logits"].float().softmax(-1)[..., 1:]
        boxes = self.box_coder.decode(self.anchors(outputs), outputs["bbox_regression"].float())
        return scores, boxes

    def _detections(self, outputs: dict[str, Any], sizes: Tensor, hard: bool = False) -> tuple[Tensor, ...]:
        scores, boxes = self.decode(outputs)
        settings = self.postprocess_settings
        if hard and settings.nms_method in ("gaussian", "linear"):
            settings = replace(settings, nms_method="hard")  # soft-NMS has no ONNX operator
        return detections_per_class(scores, boxes, sizes, settings)

    @torch.no_grad()
    def postprocess(self, outputs: dict[str, Any], image_sizes: Sequence[tuple[int, int]]) -> list[dict]:
        """Detections per image (``boxes`` xyxy clipped to each (h, w), ``scores``, 0-indexed ``labels``),
        best first: per image and class the ``pre_nms_topk`` best boxes above ``score_thresh``, NMS per
        image and class, ``max_detections_per_image`` per image."""
        num_images = outputs["cls_logits"].shape[0]
        sizes = torch.as_tensor(image_sizes, device=outputs["cls_logits"].device).reshape(-1, 2)
        if sizes.shape[0] != num_images:
            raise ValueError(f"got {sizes.shape[0]} image sizes for a batch of {num_images}")
        return to_per_image(self._detections(outputs, sizes), num_images)

    def export_detections(self, **inputs: Tensor) -> dict[str, Tensor]:
        """Decoding, per-class top-k and NMS in one graph (dynamic batch); soft-NMS settings run hard NMS."""
        images = inputs["images"]
        h, w = images.shape[-2:]
        sizes = torch.tensor([[h, w]], device=images.device).expand(images.shape[0], 2)  # [B, 2]
        found = self._detections(self(images), sizes, hard=True)
        return to_padded(found, images.shape[0], self.postprocess_settings.max_detections_per_image)
