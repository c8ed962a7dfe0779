"""Region proposal network: the shared-conv head (torchvision's ``RPNHead``) and the batched proposal
selection (per-level top-k, clip, small-box removal, NMS per image and level, post-NMS top-n)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from detforge.boxes import AnchorBoxCoder
from detforge.nms import grouped_nms

__all__ = ["ProposalOrder", "RPNHead", "rank_in_image", "select_proposals"]

ProposalOrder = Literal["score", "anchor"]
"""The order of the kept proposals: best first, or by anchor (see :func:`select_proposals`)."""


class RPNHead(nn.Module):
    """``conv_depth`` 3x3 convs + ReLU shared by every level (torchvision's v1 models: 1, v2: 2), then 1x1
    convs for objectness and anchor deltas. The convs are ``conv.0``, ``conv.2``, ... (ReLUs between).

    ``forward(features [Tensor[B, C, H_l, W_l] per level]) -> (objectness Tensor[B, A], deltas Tensor[B, A, 4])``
    with the levels concatenated and ``(row, column, anchor)`` order inside a level (the anchors' order).
    """

    def __init__(self, channels: int, num_anchors: int, conv_depth: int = 1) -> None:
        super().__init__()
        if int(conv_depth) < 1:
            raise ValueError(f"rpn conv_depth must be >= 1, got {conv_depth}")
        layers: list[nn.Module] = []
        for _ in range(int(conv_depth)):
            layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True)]
        self.conv = nn.Sequential(*layers)
        self.cls_logits = nn.Conv2d(channels, num_anchors, 1)
        self.bbox_pred = nn.Conv2d(channels, num_anchors * 4, 1)
        for layer in (*self.conv[::2], self.cls_logits, self.bbox_pred):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, features: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        logits, deltas = [], []
        for feature in features:
            t = self.conv(feature)
            b, a = t.shape[0], self.cls_logits.out_channels
            logits.append(self.cls_logits(t).permute(0, 2, 3, 1).reshape(b, -1))  # [B, H * W * A]
            d = self.bbox_pred(t)  # [B, A * 4, H, W]
            deltas.append(d.reshape(b, a, 4, d.shape[2], d.shape[3]).permute(0, 3, 4, 1, 2).reshape(b, -1, 4))
        return torch.cat(logits, 1), torch.cat(deltas, 1)  # [B, A], [B, A, 4]


def rank_in_image(image_idx: Tensor, num_images: int) -> Tensor:
    """Position of each entry among those of its image, in the given order: Tensor[N] int64."""
    one_hot = (image_idx[:, None] == torch.arange(num_images, device=image_idx.device)).long()  # [N, B]
    return (one_hot.cumsum(0) * one_hot).sum(1) - 1


def clip_to_sizes(boxes: Tensor, image_sizes: Tensor) -> Tensor:
    """Clip xyxy ``boxes`` (Tensor[B, N, ..., 4]) to each image's (h, w) (``image_sizes`` Tensor[B, 2])."""
    hw = image_sizes.to(boxes.dtype)  # [B, 2]
    upper = torch.cat([hw.flip(-1), hw.flip(-1)], dim=-1)  # [B, 4] (w, h, w, h)
    upper = upper.reshape(upper.shape[0], *([1] * (boxes.dim() - 2)), 4)
    return torch.minimum(boxes.clamp(min=0), upper)


def select_proposals(
    objectness: Tensor,
    deltas: Tensor,
    anchors: Tensor,
    level_sizes: Sequence[int],
    image_sizes: Tensor,
    coder: AnchorBoxCoder,
    pre_nms_top_n: int,
    post_nms_top_n: int,
    nms_thresh: float,
    min_size: float = 1e-3,
    score_thresh: float = 0.0,
    order: ProposalOrder = "score",
) -> tuple[Tensor, Tensor, Tensor]:
    """Proposals of every image at once (torchvision's ``RegionProposalNetwork.filter_proposals``).

    Args:
        objectness: Tensor[B, A] logits; deltas: Tensor[B, A, 4]; anchors: Tensor[A, 4]; level_sizes: anchors
            per level (sum A); image_sizes: Tensor[B, 2] (h, w) the proposals are clipped to.
        order: "score": the kept proposals best first (torchvision's order); "anchor": the same proposals in
            the order of their anchors, which does not depend on how rounding orders near-equal objectness
            (an exported graph's raw outputs then match across runtimes).

    Returns:
        proposals (Tensor[B, R, 4] xyxy, zeros past an image's count), their objectness probabilities
        (Tensor[B, R]) and which are real (Tensor[B, R] bool), best first (``order="score"``); R =
        min(post_nms_top_n, sum over levels of min(pre_nms_top_n, level size)): fixed by the input size, not
        the data.
    """
    num_images = objectness.shape[0]
    objectness, deltas = objectness.detach(), deltas.detach()
    top_index, levels, start = [], [], 0
    for level, size in enumerate(level_sizes):
        k = min(pre_nms_top_n, size)
        _, idx = objectness[:, start : start + size].topk(k, dim=1)  # [B, k]
        top_index.append(idx + start)
        levels.append(torch.full((k,), level, dtype=torch.int64, device=objectness.device))
        start += size
    index = torch.cat(top_index, 1)  # [B, K]
    level = torch.cat(levels)  # [K]
    batch = torch.arange(num_images, device=objectness.device)[:, None]  # [B, 1]
    logits = objectness[batch, index]  # [B, K]
    scores = logits.sigmoid()
    boxes = clip_to_sizes(coder.decode(anchors[index], deltas[batch, index]), image_sizes)  # [B, K, 4]
    wh = boxes[..., 2:] - boxes[..., :2]
    keep = (wh >= min_size).all(-1) & (scores >= score_thresh)  # [B, K]
    image_idx, k_idx = keep.nonzero(as_tuple=True)  # [N] each
    flat_boxes, flat_scores = boxes[image_idx, k_idx], scores[image_idx, k_idx]
    # NMS ranks by the logits: the same order as the probabilities, without the ties that float32 sigmoids
    # near 0.5 create (which onnxruntime and PyTorch would break differently)
    groups = image_idx * len(level_sizes) + level[k_idx]
    kept = grouped_nms(flat_boxes, logits[image_idx, k_idx], groups, nms_thresh)
    rank = rank_in_image(image_idx[kept], num_images)  # [M]
    kept, rank = kept[rank < post_nms_top_n], rank[rank < post_nms_top_n]  # [M'] best first per image
    if order == "anchor":  # the kept ones by (image, anchor): no order among near-equal scores to break
        anchor_id = index[image_idx[kept], k_idx[kept]]  # [M']
        kept = kept[(image_idx[kept] * anchors.shape[0] + anchor_id).argsort()]
        rank = rank_in_image(image_idx[kept], num_images)
    r = min(post_nms_top_n, index.shape[1])
    slot = image_idx[kept] * r + rank  # [M'] unique slots of the [B * R] outputs
    out_boxes = boxes.new_zeros(num_images * r, 4).index_put((slot,), flat_boxes[kept])
    out_scores = scores.new_zeros(num_images * r).index_put((slot,), flat_scores[kept])
    valid = torch.zeros(num_images * r, dtype=torch.bool, device=boxes.device).index_put(
        (slot,), torch.ones_like(slot, dtype=torch.bool)
    )
    return (
        out_boxes.reshape(num_images, r, 4),
        out_scores.reshape(num_images, r),
        valid.reshape(num_images, r),
    )
