"""Detection confusion matrix: detections paired with ground truth of any class by IoU, batched over images.

:class:`MatchInputs` holds the detections and ground truth of a set of images (flat, with each row's image),
as the F1 curve (:mod:`detforge.metrics.f1`) and the confusion matrix both read them. The pairing rule of the
matrix (:func:`confusion_pairs`): per image, detections with score >= a confidence and the ground truth that
is neither crowd nor ignored are paired by IoU >= a threshold, highest IoU first (ties: the lower ground-truth
index, then the lower detection index, both in input order), each box used once, whatever their classes.

Instead of a loop over images, the images are padded to ``[B, N, K]`` IoU blocks and matched together: each
round takes every pair that is the best of both its row and its column (a locally dominant pair), which gives
exactly the matches of the one-pair-at-a-time greedy rule, in a few rounds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import box_iou

__all__ = ["MatchInputs", "confusion_matrix", "confusion_pairs", "image_errors", "matrix_of_pairs"]

_BLOCK_ELEMENTS = 1 << 21
"""Most (image, ground truth, detection) IoU entries matched at once: bounds the padded blocks' memory."""


def _check_threshold(name: str, value: float) -> float:
    if not 0.0 < float(value) <= 1.0:
        raise ValueError(f"{name} must be in (0, 1], got {value}")
    return float(value)


@dataclass(frozen=True)
class MatchInputs:
    """Detections and ground truth of ``num_images`` images, one row per box (CPU tensors).

    Attributes:
        det_boxes (float64 [D, 4]): xyxy pixels.
        det_scores (float64 [D]), det_labels (int64 [D]).
        det_image (int64 [D]): image index of each detection, in [0, num_images).
        gt_boxes (float64 [G, 4]): xyxy pixels.
        gt_labels (int64 [G]).
        gt_crowd (bool [G]): COCO crowd regions.
        gt_ignore (bool [G]): objects not counted (detforge targets' ``ignore``).
        gt_image (int64 [G]): image index of each object.
        num_images: images in the set, including those without boxes.
    """

    det_boxes: Tensor
    det_scores: Tensor
    det_labels: Tensor
    det_image: Tensor
    gt_boxes: Tensor
    gt_labels: Tensor
    gt_crowd: Tensor
    gt_ignore: Tensor
    gt_image: Tensor
    num_images: int

    @classmethod
    def from_counts(
        cls,
        *,
        det_boxes: Tensor,
        det_scores: Tensor,
        det_labels: Tensor,
        det_counts: Tensor,
        gt_boxes: Tensor,
        gt_labels: Tensor,
        gt_counts: Tensor,
        gt_crowd: Tensor | None = None,
        gt_ignore: Tensor | None = None,
    ) -> MatchInputs:
        """Rows concatenated image after image, with ``det_counts`` / ``gt_counts`` (int [I]) rows per image."""
        det_counts = torch.as_tensor(det_counts).reshape(-1).long().cpu()
        gt_counts = torch.as_tensor(gt_counts).reshape(-1).long().cpu()
        if len(det_counts) != len(gt_counts):
            raise ValueError(
                f"got detection counts of {len(det_counts)} images, ground truth of {len(gt_counts)}"
            )
        num_images = len(det_counts)
        g = int(gt_counts.sum())
        no = torch.zeros(g, dtype=torch.bool)
        inputs = cls(
            det_boxes=torch.as_tensor(det_boxes).detach().cpu().double().reshape(-1, 4),
            det_scores=torch.as_tensor(det_scores).detach().cpu().double().reshape(-1),
            det_labels=torch.as_tensor(det_labels).detach().cpu().long().reshape(-1),
            det_image=torch.repeat_interleave(torch.arange(num_images), det_counts),
            gt_boxes=torch.as_tensor(gt_boxes).detach().cpu().double().reshape(-1, 4),
            gt_labels=torch.as_tensor(gt_labels).detach().cpu().long().reshape(-1),
            gt_crowd=no if gt_crowd is None else torch.as_tensor(gt_crowd).detach().cpu().bool().reshape(-1),
            gt_ignore=no
            if gt_ignore is None
            else torch.as_tensor(gt_ignore).detach().cpu().bool().reshape(-1),
            gt_image=torch.repeat_interleave(torch.arange(num_images), gt_counts),
            num_images=num_images,
        )
        inputs._check_lengths()
        return inputs

    @classmethod
    def from_lists(
        cls, predictions: Sequence[Mapping[str, Tensor]], targets: Sequence[Mapping[str, Tensor]]
    ) -> MatchInputs:
        """Per-image dicts: ``predictions`` hold ``boxes`` (Tensor[K, 4] xyxy), ``scores`` (Tensor[K]),
        ``labels`` (Tensor[K]); ``targets`` hold ``boxes`` (Tensor[N, 4] xyxy), ``labels`` (Tensor[N]) and
        optionally ``iscrowd`` and ``ignore`` (Tensor[N])."""
        if len(predictions) != len(targets):
            raise ValueError(f"got {len(predictions)} predictions for {len(targets)} targets")

        def column(rows: Sequence[Mapping[str, Tensor]], key: str, dtype: torch.dtype) -> Tensor:
            shape = (-1, 4) if key == "boxes" else (-1,)
            parts = [torch.as_tensor(r[key]).detach().cpu().to(dtype).reshape(shape) for r in rows]
            return torch.cat(parts) if parts else torch.zeros((0, 4)[: len(shape)], dtype=dtype)

        def flags(t: Mapping[str, Tensor], key: str) -> Tensor:
            n = torch.as_tensor(t["labels"]).numel()
            return (
                torch.as_tensor(t[key]).reshape(-1).bool() if key in t else torch.zeros(n, dtype=torch.bool)
            )

        for i, p in enumerate(predictions):
            n = {key: torch.as_tensor(p[key]).numel() for key in ("boxes", "scores", "labels")}
            n["boxes"] //= 4
            if len(set(n.values())) != 1:
                raise ValueError(
                    f"prediction {i}: {n['boxes']} boxes, {n['scores']} scores, {n['labels']} labels"
                )
        for i, t in enumerate(targets):
            n = torch.as_tensor(t["boxes"]).numel() // 4
            if torch.as_tensor(t["labels"]).numel() != n:
                raise ValueError(f"target {i}: {n} boxes, {torch.as_tensor(t['labels']).numel()} labels")
        empty = torch.zeros(0, dtype=torch.bool)
        return cls.from_counts(
            det_boxes=column(predictions, "boxes", torch.float64),
            det_scores=column(predictions, "scores", torch.float64),
            det_labels=column(predictions, "labels", torch.int64),
            det_counts=torch.tensor(
                [torch.as_tensor(p["scores"]).numel() for p in predictions], dtype=torch.long
            ),
            gt_boxes=column(targets, "boxes", torch.float64),
            gt_labels=column(targets, "labels", torch.int64),
            gt_counts=torch.tensor([torch.as_tensor(t["labels"]).numel() for t in targets], dtype=torch.long),
            gt_crowd=torch.cat([flags(t, "iscrowd") for t in targets]) if targets else empty,
            gt_ignore=torch.cat([flags(t, "ignore") for t in targets]) if targets else empty,
        )

    def _check_lengths(self) -> None:
        d, g = len(self.det_image), len(self.gt_image)
        for name in ("det_boxes", "det_scores", "det_labels"):
            if len(getattr(self, name)) != d:
                raise ValueError(
                    f"{name} has {len(getattr(self, name))} rows, the detection counts sum to {d}"
                )
        for name in ("gt_boxes", "gt_labels", "gt_crowd", "gt_ignore"):
            if len(getattr(self, name)) != g:
                raise ValueError(
                    f"{name} has {len(getattr(self, name))} rows, the ground-truth counts sum to {g}"
                )

    @property
    def gt_counted(self) -> Tensor:
        """bool [G]: objects that count (neither crowd nor ignored)."""
        return ~(self.gt_crowd | self.gt_ignore)

    def num_classes(self) -> int:
        """One more than the largest label of a detection or a counted object (0 without boxes)."""
        labels = torch.cat([self.det_labels, self.gt_labels[self.gt_counted]])
        return int(labels.max()) + 1 if len(labels) else 0


def _padded(image: Tensor, lookup: Tensor, width: int, values: Tensor) -> Tensor:
    """Scatter ``values`` (one per row; rows sorted by ``image``) into a zero-filled ``[B, width, ...]`` block:
    block row ``lookup[image]``, position the row's place among its image's rows (input order)."""
    out = torch.zeros((int(lookup.max()) + 1, width, *values.shape[1:]), dtype=values.dtype)
    out[lookup[image], _position(image)] = values
    return out


def _position(image: Tensor) -> Tensor:
    """Position of each row among the rows of its image (``image`` sorted ascending): int64 [R]."""
    if len(image) == 0:
        return image
    first = torch.ones(len(image), dtype=torch.bool)
    first[1:] = image[1:] != image[:-1]
    start = torch.cummax(torch.where(first, torch.arange(len(image)), 0), dim=0).values
    return torch.arange(len(image)) - start


def _chunks(cost_n: Tensor, cost_k: Tensor) -> list[slice]:
    """Consecutive runs of images whose padded block ``len * max(n) * max(k)`` fits ``_BLOCK_ELEMENTS``."""
    out, start, total = [], 0, len(cost_n)
    while start < total:
        n = torch.cummax(cost_n[start:], dim=0).values
        k = torch.cummax(cost_k[start:], dim=0).values
        size = torch.arange(1, total - start + 1) * n * k  # [R] non-decreasing
        stop = start + max(1, int(torch.searchsorted(size, _BLOCK_ELEMENTS, right=True)))
        out.append(slice(start, stop))
        start = stop
    return out


def _greedy_block(iou: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Greedy matching in every image of a block at once. ``iou`` (float64 [B, N, K]): a pair's IoU, -1 where
    it may not be paired. Returns (image, row, column) of the matches, int64 [M] each."""
    iou = iou.clone()
    rows = torch.arange(iou.shape[1])
    found: list[tuple[Tensor, Tensor, Tensor]] = []
    while True:
        best, col_of_row = iou.max(dim=2)  # [B, N]: first maximum of each row
        row_of_col = iou.argmax(dim=1)  # [B, K]: first maximum of each column
        dominant = (best >= 0) & (row_of_col.gather(1, col_of_row) == rows)  # [B, N]
        if not bool(dominant.any()):
            break
        b, n = dominant.nonzero(as_tuple=True)
        k = col_of_row[b, n]
        found.append((b, n, k))
        iou[b, n, :] = -1
        iou[b, :, k] = -1
    if not found:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, empty, empty
    return tuple(torch.cat(parts) for parts in zip(*found))  # type: ignore[return-value]


def confusion_pairs(
    inputs: MatchInputs, score_threshold: float, iou_threshold: float = 0.5
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Pair detections with ground truth of any class (the rule in the module docstring).

    Returns:
        (det_used bool [D], gt_used bool [G], pair_gt int64 [M], pair_det int64 [M]): the detections with
        score >= ``score_threshold``, the counted objects, and the matched pairs (row indices of ``inputs``).
    """
    iou_threshold = _check_threshold("iou_threshold", iou_threshold)
    det_used = inputs.det_scores >= float(score_threshold)  # [D]
    gt_used = inputs.gt_counted  # [G]
    d_idx = det_used.nonzero().reshape(-1)
    d_idx = d_idx[torch.sort(inputs.det_image[d_idx], stable=True).indices]  # by image, input order inside
    g_idx = gt_used.nonzero().reshape(-1)
    g_idx = g_idx[torch.sort(inputs.gt_image[g_idx], stable=True).indices]
    d_img, g_img = inputs.det_image[d_idx], inputs.gt_image[g_idx]
    d_count = torch.bincount(d_img, minlength=inputs.num_images)  # [I]
    g_count = torch.bincount(g_img, minlength=inputs.num_images)  # [I]
    images = ((d_count > 0) & (g_count > 0)).nonzero().reshape(-1)
    size = g_count[images] * d_count[images]  # [I'] IoU entries of each image with pairs
    images = images[torch.sort(size, stable=True).indices]  # similar sizes share a block: little padding
    pairs_g, pairs_d = [], []
    for part in _chunks(g_count[images], d_count[images]):
        chunk = images[part]
        lookup = torch.full((inputs.num_images,), -1, dtype=torch.long)
        lookup[chunk] = torch.arange(len(chunk))
        d_in = lookup[d_img] >= 0
        g_in = lookup[g_img] >= 0
        n, k = int(g_count[chunk].max()), int(d_count[chunk].max())
        g_rows = _padded(g_img[g_in], lookup, n, g_idx[g_in])  # [B, N] row of each object in inputs
        d_rows = _padded(d_img[d_in], lookup, k, d_idx[d_in])  # [B, K]
        g_valid = _padded(g_img[g_in], lookup, n, torch.ones(int(g_in.sum()), dtype=torch.bool))  # [B, N]
        d_valid = _padded(d_img[d_in], lookup, k, torch.ones(int(d_in.sum()), dtype=torch.bool))  # [B, K]
        iou = box_iou(inputs.gt_boxes[g_rows], inputs.det_boxes[d_rows])  # [B, N, K]
        ok = (iou >= iou_threshold) & g_valid[:, :, None] & d_valid[:, None, :]  # NaN (empty boxes) fails
        bi, ni, ki = _greedy_block(torch.where(ok, iou, -1.0))
        pairs_g.append(g_rows[bi, ni])
        pairs_d.append(d_rows[bi, ki])
    empty = torch.zeros(0, dtype=torch.long)
    pair_gt = torch.cat(pairs_g) if pairs_g else empty
    pair_det = torch.cat(pairs_d) if pairs_d else empty
    return det_used, gt_used, pair_gt, pair_det


def _unpaired(used: Tensor, paired: Tensor) -> Tensor:
    """bool [R]: rows in ``used`` (bool [R]) that are not among ``paired`` (int64 [M])."""
    out = used.clone()
    out[paired] = False
    return out


def matrix_of_pairs(
    inputs: MatchInputs, num_classes: int, score_threshold: float, iou_threshold: float = 0.5
) -> np.ndarray:
    """Confusion matrix (int64 [C + 1, C + 1]) of :func:`confusion_pairs`: rows true classes, columns predicted
    classes, index ``C`` background (a missed object: row c, column C; a false detection: row C, column c)."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    det_used, gt_used, pair_gt, pair_det = confusion_pairs(inputs, score_threshold, iou_threshold)
    for where, labels, used, image in (
        ("prediction", inputs.det_labels, det_used, inputs.det_image),
        ("target", inputs.gt_labels, gt_used, inputs.gt_image),
    ):
        bad = used & ((labels < 0) | (labels >= num_classes))
        if bool(bad.any()):
            i = int(image[bad][0])
            raise ValueError(
                f"{where} {i}: label outside [0, {num_classes}): {labels[used & (image == i)].tolist()}"
            )
    bg, side = num_classes, num_classes + 1
    missed = _unpaired(gt_used, pair_gt)
    false = _unpaired(det_used, pair_det)
    cells = torch.cat(
        [
            inputs.gt_labels[pair_gt] * side + inputs.det_labels[pair_det],
            inputs.gt_labels[missed] * side + bg,
            bg * side + inputs.det_labels[false],
        ]
    )
    return torch.bincount(cells, minlength=side * side).reshape(side, side).numpy().astype(np.int64)


def image_errors(
    inputs: MatchInputs, score_threshold: float, iou_threshold: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Per image, the missed objects and the false detections of :func:`confusion_pairs` at
    ``score_threshold``: the confusion matrix's background column and background row, image by image.

    Returns:
        (missed int64 [num_images], false_positives int64 [num_images]); they sum to the matrix's
        ``[:C, C].sum()`` and ``[C, :C].sum()``.
    """
    det_used, gt_used, pair_gt, pair_det = confusion_pairs(inputs, score_threshold, iou_threshold)
    missed = torch.bincount(inputs.gt_image[_unpaired(gt_used, pair_gt)], minlength=inputs.num_images)
    false = torch.bincount(inputs.det_image[_unpaired(det_used, pair_det)], minlength=inputs.num_images)
    return missed.numpy().astype(np.int64), false.numpy().astype(np.int64)


def confusion_matrix(
    predictions: Sequence[Mapping[str, Tensor]],
    targets: Sequence[Mapping[str, Tensor]],
    num_classes: int,
    iou_threshold: float = 0.5,
    score_threshold: float = 0.25,
) -> np.ndarray:
    """Detection confusion matrix (int64 [C + 1, C + 1]): rows are true classes, columns predicted classes,
    index ``C`` is background (a missed object: row c, column C; a false detection: row C, column c).

    Per image, predictions with score >= ``score_threshold`` are paired with ground truth of any class by
    IoU >= ``iou_threshold``, highest IoU first, each box used once. Crowd and ignored objects are skipped.

    Args:
        predictions: per image ``boxes`` (Tensor[K, 4] xyxy), ``scores`` (Tensor[K]), ``labels`` (Tensor[K]).
        targets: per image ``boxes`` (Tensor[N, 4] xyxy), ``labels`` (Tensor[N]), optional ``iscrowd``,
            ``ignore`` (Tensor[N]).
        num_classes: C; labels must lie in [0, C).
    """
    inputs = MatchInputs.from_lists(predictions, targets)
    return matrix_of_pairs(inputs, num_classes, score_threshold, iou_threshold)
