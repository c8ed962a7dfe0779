"""Faster R-CNN (Ren et al. 2015) with an FPN (Lin et al. 2017) on any timm backbone, batched.

One forward gives the inference path: RPN outputs, the test-setting proposals (Tensor[B, R, 4], padded, with a
mask) and the RoI head's class logits and class-specific deltas for them; ``postprocess`` turns these into
detections. ``forward_loss(images, targets)`` returns the same outputs plus the four losses: it matches and
samples anchors and RoIs for the whole batch (:mod:`detforge.assigners.rcnn`) and runs the RoI head on the
sampled RoIs (in training mode from the training-setting proposals, with the inference-path head run without
gradients, unless ``detections=False``: the training step skips it, as torchvision's training forward does).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any, Literal, Unpack, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detforge.assigners.rcnn import BELOW_LOW, BETWEEN, hash_priority, match_boxes, sample_balanced
from detforge.boxes import AnchorBoxCoder
from detforge.models.backbone import FeatureBackboneConfig, PyramidBackbone
from detforge.models.base import ChannelsLast, Detector, PostprocessOptions
from detforge.models.criteria.common import check_labels
from detforge.models.faster_rcnn.anchors import AnchorGenerator, default_anchor_sizes
from detforge.models.faster_rcnn.detect import detections_flat, to_padded, to_per_image
from detforge.models.faster_rcnn.losses import roi_loss, rpn_loss
from detforge.models.faster_rcnn.roi_head import (
    BoxHeadType,
    FastRCNNPredictor,
    MultiScaleRoIPool,
    build_box_head,
)
from detforge.models.faster_rcnn.rpn import ProposalOrder, RPNHead, select_proposals
from detforge.targets import image_sizes_of, pad_targets

__all__ = ["AnchorStrides", "FPNNorm", "FasterRCNN"]

FPNNorm = Literal["none", "batch"]
"""Normalisation after the FPN's convolutions: none (convolutions with bias) or BatchNorm (torchvision's v2)."""

AnchorStrides = Literal["nominal", "floor_ratio"]
"""Where a level's anchors sit: ``nominal``: every ``stride`` pixels; ``floor_ratio``: every ``padded image side
// feature side`` pixels per axis, torchvision's ``AnchorGenerator`` (they differ where a level's size was
rounded up, e.g. the "pool" level of an odd-sized map)."""


class FasterRCNN(ChannelsLast, Detector):
    """Two-stage detector: timm backbone + FPN, RPN, multi-scale RoIAlign, box head (two FC layers, or
    convolutions + one FC layer).

    Args:
        backbone: timm model name, ``FeatureBackboneConfig`` or built timm feature extractor; its levels feed
            the FPN (P2-P5 on a ResNet with ``out_indices=(1, 2, 3, 4)``, as torchvision).
        num_classes: object classes (labels 0..C-1; the background class is internal, index 0 of the head).
        fpn_channels: FPN channels.
        fpn_norm: normalisation after the FPN's convolutions (:data:`FPNNorm`; "batch": torchvision's v2).
        simple_pyramid: False keeps backbone levels of equal stride as they are, each an FPN input
            (torchvision's MobileNetV3-FPN: two stride-32 maps); True turns a single-stride backbone (ViT)
            into ViTDet's simple pyramid.
        pool_level: add torchvision's "pool" level (1x1 max pool, stride 2, of the coarsest FPN level) for the
            RPN; the RoI head pools from the FPN levels only.
        anchor_sizes: anchor sizes per RPN level (None: 8 x stride, torchvision's 32-512 on strides 4-64).
        anchor_strides: :data:`AnchorStrides` ("floor_ratio": torchvision's placement, exact on any size).
        rpn_conv_depth: 3x3 convs of the RPN head (torchvision's v2: 2).
        rpn_score_thresh: drop proposals whose objectness probability is below this (torchvision's
            MobileNetV3 models: 0.05).
        proposal_order: the kept proposals (and their RoI head outputs) best first ("score"), or in anchor
            order ("anchor": the same proposals and detections, and raw outputs of an exported graph that do
            not depend on how a runtime's rounding orders near-equal objectness).
        aspect_ratios: anchor height / width ratios (one tuple for all levels, or one per level).
        rpn_pre_nms_top_n_train / _test: proposals kept per level and image before NMS (train / inference).
        rpn_post_nms_top_n_train / _test: proposals kept per image after NMS.
        rpn_nms_thresh: proposal NMS IoU (per image and level).
        rpn_fg_iou_thresh, rpn_bg_iou_thresh: anchor matching thresholds (low-quality matches allowed).
        rpn_batch_size_per_image, rpn_positive_fraction: anchors sampled per image for the RPN loss.
        box_fg_iou_thresh, box_bg_iou_thresh: RoI matching thresholds.
        box_batch_size_per_image, box_positive_fraction: RoIs sampled per image for the box-head loss.
        box_head: :data:`~detforge.models.faster_rcnn.roi_head.BoxHeadType` ("two_mlp": two FC layers;
            "conv_fc": ``box_head_conv_channels`` 3x3 conv + BatchNorm + ReLU layers and one FC layer,
            torchvision's v2).
        box_head_conv_channels: the "conv_fc" head's conv channels.
        representation_size: width of the FC layers; roi_output_size, roi_sampling_ratio: RoIAlign's.
        box_weights: the box head's delta weights (the RPN's are 1, 1, 1, 1).
        hard_negative_mining: keep the highest-loss background RoIs (OHEM) instead of random ones.
        score_thresh, nms_thresh, pre_nms_topk (candidates per image), max_detections_per_image, nms_method,
            soft_nms_sigma: post-processing (:class:`~detforge.models.base.PostprocessSettings`).
        in_chans, input_size, normalize: image channels, default input size, normalise with the backbone's
            statistics inside the model.
        channels_last: run the convolutions in channels-last memory format (the Trainer's
            :class:`~detforge.engine.memory_format.MemoryFormatChoice` measures which format is faster on the
            machine and switches it).
    """

    raw_outputs_on_grid = True  # the anchors of the example's size are in the graph

    postprocess_defaults = {"nms_thresh": 0.5}
    keeps_aspect_ratio = True  # multi-scale training: a shortest edge per image (torchvision / mmdet)

    def __init__(
        self,
        backbone: str | FeatureBackboneConfig | nn.Module,
        num_classes: int,
        fpn_channels: int = 256,
        fpn_norm: FPNNorm = "none",
        simple_pyramid: bool = True,
        pool_level: bool = True,
        anchor_sizes: Sequence[Sequence[float]] | None = None,
        aspect_ratios: Sequence[Sequence[float]] = ((0.5, 1.0, 2.0),),
        anchor_strides: AnchorStrides = "nominal",
        rpn_conv_depth: int = 1,
        rpn_score_thresh: float = 0.0,
        proposal_order: ProposalOrder = "score",
        rpn_pre_nms_top_n_train: int = 2000,
        rpn_pre_nms_top_n_test: int = 1000,
        rpn_post_nms_top_n_train: int = 2000,
        rpn_post_nms_top_n_test: int = 1000,
        rpn_nms_thresh: float = 0.7,
        rpn_fg_iou_thresh: float = 0.7,
        rpn_bg_iou_thresh: float = 0.3,
        rpn_batch_size_per_image: int = 256,
        rpn_positive_fraction: float = 0.5,
        box_fg_iou_thresh: float = 0.5,
        box_bg_iou_thresh: float = 0.5,
        box_batch_size_per_image: int = 512,
        box_positive_fraction: float = 0.25,
        box_head: BoxHeadType = "two_mlp",
        box_head_conv_channels: Sequence[int] = (256, 256, 256, 256),
        representation_size: int = 1024,
        roi_output_size: int = 7,
        roi_sampling_ratio: int = 2,
        box_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0),
        hard_negative_mining: bool = False,
        in_chans: int = 3,
        input_size: tuple[int, int] = (320, 320),
        normalize: bool = True,
        channels_last: bool = True,
        **postprocess: Unpack[PostprocessOptions],
    ) -> None:
        super().__init__(num_classes, in_chans=in_chans, input_size=input_size, **postprocess)
        for name in ("rpn_batch_size_per_image", "box_batch_size_per_image", "representation_size"):
            if int(locals()[name]) < 1:
                raise ValueError(f"{name} must be >= 1, got {locals()[name]}")
        for name, value, allowed in (
            ("fpn_norm", fpn_norm, FPNNorm), ("anchor_strides", anchor_strides, AnchorStrides),
            ("proposal_order", proposal_order, ProposalOrder),
        ):  # fmt: skip
            if value not in get_args(allowed):
                raise ValueError(f"{name} must be one of {get_args(allowed)}, got {value!r}")
        if not 0.0 <= float(rpn_score_thresh) < 1.0:
            raise ValueError(f"rpn_score_thresh must be in [0, 1), got {rpn_score_thresh}")
        self.features = PyramidBackbone(
            backbone, fpn_channels, 0, in_chans, normalize, tuple(input_size),
            fpn_norm_layer=nn.BatchNorm2d if fpn_norm == "batch" else None, simple_pyramid=simple_pyramid,
        )  # fmt: skip
        self.pool_level = bool(pool_level)
        pooled = self.features.strides  # RoIAlign levels
        self.strides: tuple[int, ...] = pooled + ((2 * pooled[-1],) if pool_level else ())
        sizes = default_anchor_sizes(self.strides) if anchor_sizes is None else anchor_sizes
        self.anchor_generator = AnchorGenerator(self.strides, sizes, aspect_ratios)
        self.anchor_strides = anchor_strides
        self.rpn_head = RPNHead(fpn_channels, self.anchor_generator.num_anchors, rpn_conv_depth)
        self.roi_pool = MultiScaleRoIPool(pooled, roi_output_size, roi_sampling_ratio)
        self.box_head = build_box_head(
            box_head, fpn_channels, roi_output_size, representation_size, box_head_conv_channels
        )
        self.box_predictor = FastRCNNPredictor(representation_size, num_classes)
        self.rpn_coder = AnchorBoxCoder((1.0, 1.0, 1.0, 1.0))
        self.box_coder = AnchorBoxCoder(tuple(box_weights))
        self.rpn_train = (int(rpn_pre_nms_top_n_train), int(rpn_post_nms_top_n_train))
        self.rpn_test = (int(rpn_pre_nms_top_n_test), int(rpn_post_nms_top_n_test))
        self.rpn_nms_thresh = float(rpn_nms_thresh)
        self.rpn_score_thresh = float(rpn_score_thresh)
        self.proposal_order = proposal_order
        self.rpn_match = (float(rpn_fg_iou_thresh), float(rpn_bg_iou_thresh))
        self.rpn_sampling = (int(rpn_batch_size_per_image), float(rpn_positive_fraction))
        self.box_match = (float(box_fg_iou_thresh), float(box_bg_iou_thresh))
        self.box_sampling = (int(box_batch_size_per_image), float(box_positive_fraction))
        self.hard_negative_mining = bool(hard_negative_mining)
        self.channels_last = bool(channels_last)
        self.apply_memory_format()

    @property
    def backbone(self) -> nn.Module:
        """The timm feature extractor (what ``ObjectDetector.freeze_backbone`` freezes)."""
        return self.features.body

    def replace_predictor(self, num_classes: int) -> None:
        """A new box predictor for ``num_classes`` classes (torchvision tutorial's ``FastRCNNPredictor``
        step), keeping every other weight; ``num_classes`` and ``init_args`` follow."""
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        device = self.box_predictor.cls_score.weight.device
        self.box_predictor = FastRCNNPredictor(self.box_head.out_features, int(num_classes)).to(device)
        self.num_classes = int(num_classes)
        self.init_args["num_classes"] = int(num_classes)

    def class_layers(self) -> dict[str, tuple[int, int, int]]:
        """The box predictor for fine-tuning's ``keep_classes``: the background row then one row per class
        of ``cls_score``, and four box-delta rows per class of ``bbox_pred`` (torchvision's layout)."""
        return {
            "box_predictor.cls_score.weight": (1, 1, 1),
            "box_predictor.cls_score.bias": (1, 1, 1),
            "box_predictor.bbox_pred.weight": (1, 1, 4),
            "box_predictor.bbox_pred.bias": (1, 1, 4),
        }

    # ------------------------------------------------------------------ forward
    def _sizes(self, images: Tensor, image_sizes: Sequence[tuple[int, int]] | Tensor | None) -> Tensor:
        """(h, w) per image (Tensor[B, 2]): the given unpadded sizes, else the batch's H, W."""
        if image_sizes is None:
            h, w = images.shape[-2:]
            return torch.tensor([[h, w]], device=images.device).expand(images.shape[0], 2)
        return torch.as_tensor(image_sizes, device=images.device).reshape(-1, 2)

    def _pyramid(self, images: Tensor) -> list[Tensor]:
        features = self.features(self.in_memory_format(images))  # [B, C, H_l, W_l] per FPN level
        if self.pool_level:
            features = [*features, F.max_pool2d(features[-1], 1, 2)]
        return features

    def _head(self, features: list[Tensor], boxes: Tensor, image_idx: Tensor) -> tuple[Tensor, Tensor]:
        """RoI head on flat RoIs (Tensor[K, 4] and their image index Tensor[K]) -> (Tensor[K, C + 1],
        Tensor[K, C + 1, 4])."""
        pooled = self.roi_pool(features[: len(self.roi_pool.scales)], boxes, image_idx)  # [K, C, S, S]
        return self.box_predictor(self.box_head(pooled))

    def _proposals(self, objectness, rpn_deltas, anchors, counts, sizes, settings):
        """:func:`select_proposals` with this model's coder and NMS IoU; ``settings`` is ``rpn_test`` or
        ``rpn_train`` (per-level top-k, post-NMS count)."""
        return select_proposals(
            objectness, rpn_deltas, anchors, counts, sizes, self.rpn_coder, *settings, self.rpn_nms_thresh,
            score_thresh=self.rpn_score_thresh, order=self.proposal_order,
        )  # fmt: skip

    def _rpn(self, images: Tensor) -> tuple[list[Tensor], Tensor, Tensor, Tensor, list[int]]:
        """Features, RPN objectness (Tensor[B, A]) and deltas (Tensor[B, A, 4]), anchors (Tensor[A, 4]) and
        anchors per level."""
        features = self._pyramid(images)
        objectness, rpn_deltas = self.rpn_head(features)  # [B, A], [B, A, 4]
        feat_sizes = [(int(f.shape[-2]), int(f.shape[-1])) for f in features]
        padded = (
            (int(images.shape[-2]), int(images.shape[-1])) if self.anchor_strides == "floor_ratio" else None
        )
        anchors, counts = self.anchor_generator(feat_sizes, images.device, padded)  # [A, 4]
        return features, objectness, rpn_deltas, anchors, counts

    def _detect(
        self, features: list[Tensor], objectness: Tensor, rpn_deltas: Tensor, anchors: Tensor, counts: list[int],
        sizes: Tensor, grad: bool,
    ) -> dict[str, Tensor]:  # fmt: skip
        """The inference path after the RPN: test-setting proposals and the RoI head on them."""
        proposals, scores, mask = self._proposals(
            objectness, rpn_deltas, anchors, counts, sizes, self.rpn_test
        )  # [B, R, 4], [B, R], [B, R]
        b, r = mask.shape
        image_idx = torch.arange(b, device=mask.device)[:, None].expand(b, r).reshape(-1)  # [B * R]
        real = mask.reshape(-1).nonzero(as_tuple=True)[0]  # [K] the RoI head runs on real proposals only
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            head_logits, head_deltas = self._head(features, proposals.reshape(-1, 4)[real], image_idx[real])
        num_cls = self.box_predictor.cls_score.out_features
        logits = head_logits.new_zeros(b * r, num_cls).index_put((real,), head_logits)  # [B * R, C + 1]
        deltas = head_deltas.new_zeros(b * r, num_cls, 4).index_put((real,), head_deltas)
        return {
            "proposals": proposals,
            "proposal_scores": scores,
            "proposal_mask": mask,
            "class_logits": logits.reshape(b, r, -1),  # [B, R, C + 1]
            "box_deltas": deltas.reshape(b, r, -1, 4),  # [B, R, C + 1, 4]
        }

    def forward(
        self, images: Tensor, image_sizes: Sequence[tuple[int, int]] | Tensor | None = None
    ) -> dict[str, Any]:
        """Inference-path outputs for ``images`` (Tensor[B, C, H, W] in [0, 1]); ``image_sizes``: each
        image's unpadded (h, w), which proposals are clipped to (default: the batch's H, W)."""
        features, objectness, rpn_deltas, anchors, counts = self._rpn(images)
        sizes = self._sizes(images, image_sizes)
        detected = self._detect(features, objectness, rpn_deltas, anchors, counts, sizes, grad=True)
        return {"objectness": objectness, "rpn_deltas": rpn_deltas, **detected}

    def loss(self, outputs: dict[str, Any], targets: list[dict]) -> dict[str, Tensor]:
        raise NotImplementedError(
            "Faster R-CNN samples RoIs from the targets inside the forward: call forward_loss(images, targets)"
        )

    def forward_loss(
        self, images: Tensor, targets: list[dict], *, detections: bool = True
    ) -> tuple[dict[str, Any], dict[str, Tensor]]:
        """``(outputs, losses)``: the inference-path outputs and ``loss_objectness``, ``loss_rpn_box_reg``,
        ``loss_classifier``, ``loss_box_reg`` and ``loss`` (their sum, the only one with gradients).
        ``detections=False`` (the training step) skips the RoI head on the test-setting proposals, which only
        detections need (in training it would run on up to 1000 proposals per image, without gradients):
        the outputs then hold the RPN's only, and the losses are the same."""
        sizes = self._sizes(images, image_sizes_of(targets, images))
        gt_boxes, gt_labels, gt_mask = pad_targets(targets, images.device)  # [B, G, 4], [B, G], [B, G]
        check_labels(gt_labels, gt_mask, self.num_classes)
        features, objectness, rpn_deltas, anchors, counts = self._rpn(images)
        outputs: dict[str, Any] = {"objectness": objectness, "rpn_deltas": rpn_deltas}
        if detections:
            outputs.update(
                self._detect(features, objectness, rpn_deltas, anchors, counts, sizes, grad=not self.training)
            )
        # RPN: match anchors, sample, loss
        matched, _ = match_boxes(
            anchors[None], gt_boxes, gt_mask, *self.rpn_match, allow_low_quality_matches=True
        )
        labels = torch.where(matched >= 0, 1, torch.where(matched == BETWEEN, -1, 0))  # [B, A]
        pos, neg = sample_balanced(labels, *self.rpn_sampling, priority=self._priority(labels.shape))
        matched_boxes = _gather_boxes(gt_boxes, matched)  # [B, A, 4]
        loss_objectness, loss_rpn_box = rpn_loss(
            objectness, rpn_deltas, anchors, pos, neg, matched_boxes, self.rpn_coder
        )
        # RoIs: proposals (training settings in training mode) + ground truth, matched and sampled
        if self.training or not detections:
            settings = self.rpn_train if self.training else self.rpn_test
            proposals, _, valid = self._proposals(objectness, rpn_deltas, anchors, counts, sizes, settings)
        else:
            proposals, valid = outputs["proposals"], outputs["proposal_mask"]
        candidates = torch.cat([proposals, gt_boxes], 1)  # [B, N, 4]
        valid = torch.cat([valid, gt_mask], 1)  # [B, N]
        matched, _ = match_boxes(candidates, gt_boxes, gt_mask, *self.box_match)
        padded_labels = F.pad(gt_labels, (0, 1), value=-1)  # [B, G + 1]: gathering works with G = 0 too
        roi_labels = padded_labels.gather(1, matched.clamp(min=0)) + 1
        roi_labels = torch.where(matched >= 0, roi_labels, torch.where(matched == BELOW_LOW, 0, -1))
        roi_labels = roi_labels.masked_fill(~valid, -1)  # [B, N]
        hard = self._negative_losses(features, candidates, roi_labels) if self.hard_negative_mining else None
        pos, neg = sample_balanced(roi_labels, *self.box_sampling, self._priority(roi_labels.shape), hard)
        image_idx, roi_idx = (pos | neg).nonzero(as_tuple=True)  # [K] each
        rois = candidates[image_idx, roi_idx]  # [K, 4]
        logits, deltas = self._head(features, rois, image_idx)
        loss_classifier, loss_box = roi_loss(
            logits, deltas, roi_labels[image_idx, roi_idx], rois,
            _gather_boxes(gt_boxes, matched)[image_idx, roi_idx], self.box_coder,
        )  # fmt: skip
        total = loss_objectness + loss_rpn_box + loss_classifier + loss_box
        losses = {
            "loss": total,
            "loss_objectness": loss_objectness.detach(),
            "loss_rpn_box_reg": loss_rpn_box.detach(),
            "loss_classifier": loss_classifier.detach(),
            "loss_box_reg": loss_box.detach(),
        }
        return outputs, losses

    def _priority(self, shape: tuple[int, int]) -> Tensor | None:
        """Sampling priority: random in training (None), a fixed hash in evaluation (deterministic losses)."""
        device = self.box_predictor.cls_score.weight.device
        return None if self.training else hash_priority(shape, device)

    @torch.no_grad()
    def _negative_losses(self, features: list[Tensor], candidates: Tensor, labels: Tensor) -> Tensor:
        """Background classification loss of every negative candidate (Tensor[B, N]; -inf elsewhere): the
        hard-negative-mining priority."""
        image_idx, idx = (labels == 0).nonzero(as_tuple=True)
        logits, _ = self._head(features, candidates[image_idx, idx], image_idx)
        loss = logits.float().logsumexp(-1) - logits.float()[:, 0]  # cross-entropy against background
        return torch.full(labels.shape, -float("inf"), device=labels.device).index_put((image_idx, idx), loss)

    # ------------------------------------------------------------------ detections
    @torch.no_grad()
    def postprocess(self, outputs: dict[str, Any], image_sizes: Sequence[tuple[int, int]]) -> list[dict]:
        """Detections per image (``boxes`` xyxy clipped to each (h, w), ``scores``, 0-indexed ``labels``)."""
        num_images = outputs["proposals"].shape[0]
        sizes = torch.as_tensor(image_sizes, device=outputs["proposals"].device).reshape(-1, 2)
        found = detections_flat(outputs, sizes, self.box_coder, self.postprocess_settings)
        return to_per_image(found, num_images)

    def export_detections(self, **inputs: Tensor) -> dict[str, Tensor]:
        """Decoding, RoIAlign and NMS in one graph; one NMS over every image and class, so the batch is
        dynamic. Soft-NMS settings run hard NMS (no ONNX operator)."""
        images = inputs["images"]
        sizes = self._sizes(images, None)
        outputs = self(images)
        settings = self.postprocess_settings
        if settings.nms_method in ("gaussian", "linear"):
            settings = type(settings)(**{**asdict(settings), "nms_method": "hard"})
        found = detections_flat(outputs, sizes, self.box_coder, settings)
        return to_padded(found, images.shape[0], settings.max_detections_per_image)


def _gather_boxes(gt_boxes: Tensor, matched: Tensor) -> Tensor:
    """Each candidate's matched ground-truth box (Tensor[B, N, 4]; box 0 or zeros where unmatched)."""
    if gt_boxes.shape[1] == 0:
        return gt_boxes.new_zeros(*matched.shape, 4)
    index = matched.clamp(min=0)[..., None].expand(*matched.shape, 4)
    return gt_boxes.gather(1, index)
