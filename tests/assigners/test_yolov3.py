"""YOLOv3 assignment, batched, against a plain per-image, per-box reference loop."""

import math

import pytest
import torch

from detforge.assigners.yolov3 import YOLOv3Assigner
from detforge.boxes import anchor_grid
from detforge.targets import pad_targets

FEAT_SIZES = [(8, 12), (4, 6), (2, 3)]  # 64 x 96 input
STRIDES = (8, 16, 32)
ANCHORS = torch.tensor(
    [[4, 6], [8, 8], [12, 7], [10, 20], [20, 14], [18, 36], [36, 28], [48, 60], [90, 60]], dtype=torch.float32
)


def _shape_iou(w1, h1, w2, h2):
    inter = min(w1, w2) * min(h1, h2)
    return inter / (w1 * h1 + w2 * h2 - inter)


def _iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _reference(boxes, labels, pred_boxes, thresh=0.5, multi=None):
    """One image, one box at a time, as darknet's loop: best anchor (and with ``multi`` every anchor of
    shape IoU above it, as ultralytics' port), centre cell, later boxes overwrite."""
    counts = [h * w * 3 for h, w in FEAT_SIZES]
    num_preds = sum(counts)
    label_of = [-1] * num_preds
    gt_of = [-1] * num_preds
    for g, (x1, y1, x2, y2) in enumerate(boxes):
        w, h = x2 - x1, y2 - y1
        ious = [_shape_iou(w, h, float(a[0]), float(a[1])) for a in ANCHORS]
        best = max(range(len(ious)), key=lambda i: (ious[i], -i))
        chosen = [i for i in range(len(ious)) if i == best or (multi is not None and ious[i] > multi)]
        for anchor in chosen:
            level, k = divmod(anchor, 3)
            fh, fw = FEAT_SIZES[level]
            s = STRIDES[level]
            col = min(max(math.floor((x1 + x2) / 2 / s), 0), fw - 1)
            row = min(max(math.floor((y1 + y2) / 2 / s), 0), fh - 1)
            slot = sum(counts[:level]) + (row * fw + col) * 3 + k
            label_of[slot], gt_of[slot] = labels[g], g
    ignore = [False] * num_preds
    for p in range(num_preds):
        if gt_of[p] < 0 and boxes:
            ignore[p] = max(_iou(pred_boxes[p], b) for b in boxes) > thresh
    return label_of, gt_of, ignore


def test_anchor_grid_order():
    corners, strides, sizes = anchor_grid(FEAT_SIZES, STRIDES, ANCHORS)
    assert corners.shape == (sum(h * w * 3 for h, w in FEAT_SIZES), 2)
    # level 1, row 2, column 4, anchor 1
    p = 8 * 12 * 3 + (2 * 6 + 4) * 3 + 1
    assert (
        corners[p].tolist() == [64.0, 32.0] and strides[p] == 16 and sizes[p].tolist() == ANCHORS[4].tolist()
    )


@pytest.mark.parametrize("multi", [None, 0.2, 0.5])
def test_batched_assignment_matches_per_image_reference(multi):
    g = torch.Generator().manual_seed(3)
    per_image = []
    for n in (0, 1, 4, 7):
        xy = torch.rand(n, 2, generator=g) * torch.tensor([80.0, 50.0])
        wh = torch.rand(n, 2, generator=g) * 60 + 2
        boxes = torch.cat([xy, (xy + wh).minimum(torch.tensor([96.0, 64.0]))], 1)
        per_image.append(boxes)
    per_image[2] = torch.cat([per_image[2], per_image[2][:1] + 0.5])  # two boxes on one slot: the later wins
    targets = [{"boxes": b, "labels": torch.arange(len(b)) % 3} for b in per_image]
    gt_boxes, gt_labels, gt_mask = pad_targets(targets)
    num_preds = sum(h * w * 3 for h, w in FEAT_SIZES)
    centre = torch.rand(4, num_preds, 2, generator=g) * torch.tensor([96.0, 64.0])
    size = torch.rand(4, num_preds, 2, generator=g) * 50 + 2
    pred_boxes = torch.cat([centre - size / 2, centre + size / 2], -1)
    out = YOLOv3Assigner(0.5, multi)(pred_boxes, FEAT_SIZES, STRIDES, ANCHORS, gt_boxes, gt_labels, gt_mask)
    for i, t in enumerate(targets):
        labels, gts, ignore = _reference(
            t["boxes"].tolist(), t["labels"].tolist(), pred_boxes[i].tolist(), multi=multi
        )
        assert out.labels[i].tolist() == labels
        assert out.matched_gt[i].tolist() == gts
        assert out.ignore[i].tolist() == ignore
    if multi is None:
        assert (out.labels[2] >= 0).sum() <= len(per_image[2]) and out.ignore.any()
    elif multi == 0.2:  # some boxes got more than one anchor
        assert (out.labels >= 0).sum() > sum(len(b) for b in per_image) - 1
    assert not (out.ignore & (out.labels >= 0)).any()


def test_multi_anchor_thresh_is_checked():
    with pytest.raises(ValueError, match="multi_anchor_thresh"):
        YOLOv3Assigner(0.5, 1.5)
