"""DETR (Carion et al. 2020, "End-to-End Object Detection with Transformers") on any timm backbone.

One feature level of the backbone (C5 by default) -> 1x1 projection -> transformer encoder with the sine
positional encoding -> decoder with ``num_queries`` learned object queries -> class logits (C + 1, the last
"no object") and boxes (normalised cxcywh through a sigmoid) from every decoder layer. Training:
:class:`~detforge.models.criteria.set_prediction.SetCriterion` (Hungarian matching, cross-entropy with
no-object weight 0.1 + 5 L1 + 2 GIoU, auxiliary losses on every decoder layer). Inference: no NMS; the shared
post-processing with ``nms_method="none"`` keeps the top ``pre_nms_topk`` (100) (query, class) scores, as
Deformable DETR does.

Padding: given each image's real (unpadded) size, the backbone runs on each group of same-size images cropped
to that size (one group, one call, in the usual fixed-size batch), the encoder and the decoder's
cross-attention mask the padded cells, the positional encoding counts real cells only, and boxes are
normalised by the real size. So an image padded in a batch gets the detections it gets alone (a known failure
of DETR implementations, whose CNN also sees the padding). Without sizes (ONNX graphs, ``forward(images)``)
every image fills the batch tensor.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Unpack

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detforge.boxes import rel_cxcywh_to_xyxy
from detforge.models.backbone import FeatureBackboneConfig, FeatureBody
from detforge.models.base import Detector, PostprocessOptions
from detforge.models.criteria.set_prediction import SetCriterion
from detforge.models.detr.heads import SetPredictionHead
from detforge.models.detr.position import SinePositionEncoding, padding_mask
from detforge.models.detr.transformer import DETRTransformer
from detforge.targets import image_sizes_of, pad_targets

__all__ = ["DETR", "backbone_levels"]


def backbone_levels(level: int) -> tuple[int, int]:
    """The timm ``out_indices`` a DETR asks for to use feature level ``level`` (negative, from the end): that
    level and the one below, so a CNN never looks single-stride to :class:`FeatureBody`."""
    if level >= 0:
        raise ValueError(f"backbone_level counts from the end and must be negative (-1 = C5), got {level}")
    return (level - 1, level)


class DETR(Detector):
    """DETR on any timm backbone (module docstring).

    Args:
        backbone: timm model name, ``FeatureBackboneConfig`` or a built timm feature extractor; a name gets
            the levels ``backbone_levels(backbone_level)``. The last map the backbone returns is used.
        num_classes: object classes.
        backbone_level: which level a backbone name uses (-1: the last, C5 at stride 32; -2: stride 16).
        hidden_dim, num_heads, ffn_dim, num_encoder_layers, num_decoder_layers, dropout: the transformer
            (DETR: 256, 8, 2048, 6, 6, 0.1).
        num_queries: object queries (100).
        class_loss_weight, l1_loss_weight, giou_loss_weight, no_object_weight: the loss (1, 5, 2, 0.1); the
            matcher's costs are the same weights (1, 5, 2).
        aux_loss: auxiliary losses on every decoder layer (True); False: the last layer only.
        backbone_lr_mult: the backbone's learning rate as a fraction of the model's (0.1), read by
            :func:`detforge.engine.optim.create_optimizer` through :attr:`lr_multipliers`.
        **postprocess: the shared post-processing settings; ``nms_method`` "none" and ``pre_nms_topk`` 100
            (top (query, class) pairs) by default (:attr:`postprocess_defaults`).
        in_chans: image channels. input_size: (h, w) the model is meant to run at.
    """

    postprocess_defaults = {"pre_nms_topk": 100, "nms_method": "none"}

    def __init__(
        self,
        backbone: str | FeatureBackboneConfig | nn.Module,
        num_classes: int,
        backbone_level: int = -1,
        hidden_dim: int = 256,
        num_heads: int = 8,
        ffn_dim: int = 2048,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        dropout: float = 0.1,
        num_queries: int = 100,
        class_loss_weight: float = 1.0,
        l1_loss_weight: float = 5.0,
        giou_loss_weight: float = 2.0,
        no_object_weight: float = 0.1,
        aux_loss: bool = True,
        backbone_lr_mult: float = 0.1,
        in_chans: int = 3,
        input_size: tuple[int, int] = (512, 512),
        **postprocess: Unpack[PostprocessOptions],
    ) -> None:
        super().__init__(num_classes, in_chans=in_chans, input_size=input_size, **postprocess)
        if num_queries < 1:
            raise ValueError(f"num_queries must be >= 1, got {num_queries}")
        if backbone_lr_mult < 0:
            raise ValueError(f"backbone_lr_mult must be >= 0, got {backbone_lr_mult}")
        if isinstance(backbone, str):
            backbone = FeatureBackboneConfig(backbone, out_indices=backbone_levels(backbone_level))
        # A single-stride ViT: its last map as it is.
        self.features = FeatureBody(backbone, in_chans, tuple(input_size), pyramid_scales=(1.0,))
        self.stride = int(self.features.strides[-1])
        self.input_proj = nn.Conv2d(self.features.channels[-1], hidden_dim, 1)
        self.position = SinePositionEncoding(hidden_dim)
        self.transformer = DETRTransformer(
            hidden_dim, num_heads, ffn_dim, num_encoder_layers, num_decoder_layers, dropout
        )
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.head = SetPredictionHead(hidden_dim, num_classes + 1)
        self.criterion = SetCriterion(
            "softmax",
            class_weight=class_loss_weight,
            l1_weight=l1_loss_weight,
            giou_weight=giou_loss_weight,
            no_object_weight=no_object_weight,
        )
        self.num_queries = int(num_queries)
        self.aux_loss = bool(aux_loss)
        self.backbone_lr_mult = float(backbone_lr_mult)

    @property
    def backbone(self) -> nn.Module:
        """The timm feature extractor: what ``ObjectDetector.freeze_backbone`` freezes."""
        return self.features.body

    @property
    def lr_multipliers(self) -> dict[str, float]:
        """Learning-rate multipliers by parameter-name prefix (DETR: the backbone at 0.1x)."""
        return {"features.": self.backbone_lr_mult}

    # ------------------------------------------------------------------ forward
    def forward(
        self, images: Tensor, image_sizes: Sequence[tuple[int, int]] | Tensor | None = None
    ) -> dict[str, Any]:
        """Raw outputs for ``images`` (Tensor[B, C, H, W] in [0, 1]); ``image_sizes``: each image's real
        (h, w) inside the padded batch (default: the batch's H, W).

        Returns:
            ``class_logits`` Tensor[L, B, Q, C + 1] and ``boxes`` Tensor[L, B, Q, 4] (normalised cxcywh of the
            real image) of every decoder layer, the last last, and ``image_sizes`` Tensor[B, 2] float (h, w),
            the boxes' scale.
        """
        num_images, _, height, width = images.shape
        if image_sizes is None:
            sizes = images.new_tensor([height, width]).expand(num_images, 2)  # [B, 2]
            features = self.features(images)[-1]  # [B, C, h, w]
            mask = None
        else:
            sizes = torch.as_tensor(image_sizes, device=images.device).reshape(-1, 2).to(images.dtype)
            if sizes.shape[0] != num_images:
                raise ValueError(f"got {sizes.shape[0]} image sizes for a batch of {num_images} images")
            features, mask = self._padded_features(images, sizes)
        src = self.input_proj(features)  # [B, D, h, w]
        h, w = src.shape[-2:]
        pos = self.position(mask, num_images, h, w, device=src.device).to(src.dtype)  # [B, D, h, w]
        src, pos = src.flatten(2).transpose(1, 2), pos.flatten(2).transpose(1, 2)  # [B, hw, D] each
        key_padding_mask = None if mask is None else mask.flatten(1)  # [B, hw]
        query_pos = self.query_embed.weight[None].expand(num_images, -1, -1)  # [B, Q, D]
        hidden = self.transformer(src, pos, query_pos, key_padding_mask)  # [L, B, Q, D]
        class_logits, boxes = self.head(hidden)  # [L, B, Q, C + 1], [L, B, Q, 4]
        return {"class_logits": class_logits, "boxes": boxes, "image_sizes": sizes}

    def _padded_features(self, images: Tensor, sizes: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """The backbone's last map of each image computed on its real crop, zero-padded to the batch's
        (Tensor[B, C, h, w]), and the padding mask (Tensor[B, h, w] bool, True = padding; None when every
        image fills the batch)."""
        height, width = images.shape[-2:]
        keys = [(int(h), int(w)) for h, w in sizes.tolist()]
        if all(key == (height, width) for key in keys):
            return self.features(images)[-1], None
        groups: dict[tuple[int, int], list[int]] = {}
        for i, key in enumerate(keys):
            groups.setdefault(key, []).append(i)
        maps = {key: self.features(images[idx, :, : key[0], : key[1]])[-1] for key, idx in groups.items()}
        fh = max(m.shape[-2] for m in maps.values())
        fw = max(m.shape[-1] for m in maps.values())
        first = next(iter(maps.values()))
        out = first.new_zeros(images.shape[0], first.shape[1], fh, fw)  # [B, C, h, w]
        real = torch.zeros(images.shape[0], 2, dtype=torch.int64, device=images.device)  # [B, 2] cells
        for key, idx in groups.items():
            m = maps[key]
            out[idx] = F.pad(m, (0, fw - m.shape[-1], 0, fh - m.shape[-2]))
            real[idx] = torch.tensor(m.shape[-2:], device=images.device)
        return out, padding_mask(real, fh, fw)

    # ------------------------------------------------------------------ training
    def forward_loss(
        self, images: Tensor, targets: list[dict], *, detections: bool = True
    ) -> tuple[dict[str, Any], dict[str, Tensor]]:
        """``(outputs, losses)`` with the real image sizes of the targets (``size``) passed to ``forward``
        (``detections``: the losses need every output, so nothing is skipped)."""
        outputs = self(images, image_sizes_of(targets, images))
        return outputs, self.loss(outputs, targets)

    def loss(self, outputs: dict[str, Any], targets: list[dict]) -> dict[str, Tensor]:
        """The set-prediction losses (:class:`SetCriterion`): ``class_loss``, ``l1_loss``, ``giou_loss`` of
        the last decoder layer, ``aux_loss`` of the others, normalised by the boxes averaged over DDP ranks."""
        class_logits, boxes = outputs["class_logits"], outputs["boxes"]
        if not self.aux_loss:
            class_logits, boxes = class_logits[-1:], boxes[-1:]
        gt_boxes, gt_labels, gt_mask = pad_targets(targets, boxes.device)  # [B, G, 4], [B, G], [B, G]
        return self.criterion(class_logits, boxes, gt_boxes, gt_labels, gt_mask, outputs["image_sizes"])

    # ------------------------------------------------------------------ inference
    def decode(self, outputs: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """Per-query class probabilities without "no object" (Tensor[B, Q, C], last decoder layer) and boxes
        (Tensor[B, Q, 4] xyxy pixels of the input)."""
        scores = outputs["class_logits"][-1].float().softmax(-1)[..., :-1]  # [B, Q, C]
        sizes = outputs["image_sizes"].float()[:, None, :]  # [B, 1, 2]
        boxes = rel_cxcywh_to_xyxy(outputs["boxes"][-1].float(), sizes)  # [B, Q, 4]
        return scores, boxes

    def level_sizes(self, outputs: dict[str, Any]) -> list[int]:
        """One "level" of Q queries: the top-k runs over all (query, class) pairs."""
        return [int(outputs["class_logits"].shape[2])]
