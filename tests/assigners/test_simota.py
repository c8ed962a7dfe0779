import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import box_iou

from detforge.assigners import FCOSAssigner, SimOTAAssigner
from detforge.assigners.simota import batched_box_iou
from detforge.targets import pad_targets

STRIDES = (8, 16, 32)
IMAGE = 96
FEAT_SIZES = [(IMAGE // s, IMAGE // s) for s in STRIDES]
NUM_CLASSES = 4


def grid():
    points, strides = FCOSAssigner(STRIDES, ((0, 1), (1, 2), (2, 3))).points(FEAT_SIZES)
    return points, strides  # [A, 2], [A]


def reference_image(
    scores, boxes, points, strides, gt_boxes, gt_labels, radius=2.5, topk=10, iou_w=3.0, cls_w=1.0
):
    """SimOTA for one image, written the way YOLOX does it: candidate subset, one GT at a time."""
    num_anchors = points.shape[0]
    labels = torch.full((num_anchors,), -1, dtype=torch.int64)
    matched = torch.full((num_anchors,), -1, dtype=torch.int64)
    matched_iou = torch.zeros(num_anchors)
    num_gt = gt_boxes.shape[0]
    if num_gt == 0:
        return labels, matched, matched_iou, 0
    in_box = torch.zeros(num_gt, num_anchors, dtype=torch.bool)
    in_center = torch.zeros(num_gt, num_anchors, dtype=torch.bool)
    px, py, r = points[:, 0], points[:, 1], radius * strides
    for g in range(num_gt):
        x1, y1, x2, y2 = gt_boxes[g]
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        in_box[g] = torch.stack([px - x1, py - y1, x2 - px, y2 - py]).amin(0) > 0
        in_center[g] = torch.stack([px - (cx - r), py - (cy - r), cx + r - px, cy + r - py]).amin(0) > 0
    cand = (in_box | in_center).any(0).nonzero()[:, 0]
    if cand.numel() == 0:
        return labels, matched, matched_iou, 0
    ious = box_iou(gt_boxes, boxes[cand])  # [G, Ac]
    one_hot = F.one_hot(gt_labels, scores.shape[1]).float()[:, None, :].expand(-1, cand.numel(), -1)
    cls_cost = F.binary_cross_entropy(
        scores[cand].sqrt()[None].expand(num_gt, -1, -1), one_hot, reduction="none"
    ).sum(-1)
    cost = cls_w * cls_cost + iou_w * -torch.log(ious + 1e-8)
    cost = cost.double() + 1e5 * (~(in_box & in_center)[:, cand]).double()
    dynamic_k = ious.topk(min(topk, cand.numel()), dim=1).values.sum(1).int().clamp(min=1)
    matching = torch.zeros(num_gt, cand.numel(), dtype=torch.bool)
    for g in range(num_gt):
        matching[g, cost[g].topk(int(dynamic_k[g]), largest=False).indices] = True
    conflicts = 0
    for j in range(cand.numel()):
        takers = matching[:, j].nonzero()[:, 0]
        if takers.numel() == 0:
            continue
        conflicts += takers.numel() > 1
        g = int(takers[0]) if takers.numel() == 1 else int(cost[:, j].argmin())
        a = int(cand[j])
        labels[a], matched[a], matched_iou[a] = gt_labels[g], g, ious[g, j]
    return labels, matched, matched_iou, conflicts


def random_case(gen: torch.Generator, counts: list[int]):
    points, strides = grid()
    num_anchors = points.shape[0]
    targets = []
    for n in counts:
        xy = torch.rand(n, 2, generator=gen) * (IMAGE - 8)
        wh = 2 + torch.rand(n, 2, generator=gen) * 60
        boxes = torch.cat([xy, (xy + wh).clamp(max=IMAGE + 10)], 1)
        targets.append({"boxes": boxes, "labels": torch.randint(0, NUM_CLASSES, (n,), generator=gen)})
    b = len(counts)
    scores = torch.rand(b, num_anchors, NUM_CLASSES, generator=gen) * torch.rand(
        b, num_anchors, 1, generator=gen
    )
    centres = points[None] + torch.randn(b, num_anchors, 2, generator=gen) * 4
    half = 2 + torch.rand(b, num_anchors, 2, generator=gen) * strides[None, :, None] * 3
    pred_boxes = torch.cat([centres - half, centres + half], -1)
    return scores, pred_boxes, points, strides, targets


def run_and_compare(scores, pred_boxes, points, strides, targets, **kwargs):
    gt_boxes, gt_labels, gt_mask = pad_targets(targets)
    gt_boxes[~gt_mask] = torch.tensor([0.0, 0.0, 90.0, 90.0])  # padding must never be assigned
    out = SimOTAAssigner(**kwargs).assign(scores, pred_boxes, points, strides, gt_boxes, gt_labels, gt_mask)
    ref_kwargs = {
        "radius": kwargs.get("center_radius", 2.5),
        "topk": kwargs.get("candidate_topk", 10),
        "iou_w": kwargs.get("iou_weight", 3.0),
        "cls_w": kwargs.get("cls_weight", 1.0),
    }
    conflicts = 0
    for i, t in enumerate(targets):
        labels, matched, iou, n = reference_image(
            scores[i], pred_boxes[i], points, strides, t["boxes"], t["labels"], **ref_kwargs
        )
        conflicts += n
        assert torch.equal(out.labels[i], labels), f"image {i}"
        assert torch.equal(out.matched_gt[i], matched), f"image {i}"
        torch.testing.assert_close(out.matched_iou[i], iou)
    assert torch.equal(out.fg_mask, out.labels >= 0)
    assert out.labels.dtype == out.matched_gt.dtype == torch.int64
    assert out.matched_iou.dtype == torch.float32 and out.fg_mask.dtype == torch.bool
    return out, conflicts


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_per_image_reference_on_random_batches(seed):
    gen = torch.Generator().manual_seed(seed)
    counts = [[3, 0, 12], [1, 8], [5, 5, 2, 0]][seed]
    out, conflicts = run_and_compare(*random_case(gen, counts))
    assert out.fg_mask.sum() > sum(counts)  # dynamic k gives several anchors to most GTs
    assert conflicts > 0  # anchors taken by several GTs: the one-GT-per-anchor rule is exercised


def test_other_hyper_parameters_match_reference():
    gen = torch.Generator().manual_seed(7)
    run_and_compare(
        *random_case(gen, [4, 7]), center_radius=1.5, candidate_topk=5, iou_weight=1.0, cls_weight=2.0
    )


def test_no_gt_and_all_padding():
    points, strides = grid()
    a = points.shape[0]
    scores, boxes = torch.rand(2, a, NUM_CLASSES), torch.rand(2, a, 4) * 10
    boxes[..., 2:] += boxes[..., :2] + 1
    assigner = SimOTAAssigner()
    out = assigner(
        scores,
        boxes,
        points,
        strides,
        torch.zeros(2, 0, 4),
        torch.zeros(2, 0, dtype=torch.int64),
        torch.zeros(2, 0, dtype=torch.bool),
    )
    assert out.labels.shape == (2, a) and (out.labels == -1).all() and not out.fg_mask.any()
    assert (out.matched_gt == -1).all() and (out.matched_iou == 0).all()
    out = assigner(
        scores,
        boxes,
        points,
        strides,
        torch.tensor([[[0.0, 0, 50, 50]]] * 2),
        torch.zeros(2, 1, dtype=torch.int64),
        torch.zeros(2, 1, dtype=torch.bool),
    )
    assert not out.fg_mask.any()


def test_one_gt_gets_its_dynamic_k_best_anchors():
    points, strides = grid()
    a = points.shape[0]
    gt = torch.tensor([[20.0, 20.0, 60.0, 60.0]])
    # Predictions equal to the GT near its centre, far away elsewhere: the IoU sum sets k.
    boxes = torch.tensor([[200.0, 200.0, 210.0, 210.0]]).repeat(a, 1)
    near = ((points - 40).abs() < 12).all(1)
    boxes[near] = gt
    scores = torch.full((a, NUM_CLASSES), 0.1)
    out, _ = run_and_compare(
        scores[None], boxes[None], points, strides, [{"boxes": gt, "labels": torch.tensor([2])}]
    )
    assert int(out.fg_mask.sum()) == min(10, int(near.sum()))
    assert (out.labels[out.fg_mask] == 2).all() and (out.matched_iou[out.fg_mask] == 1).all()


def test_border_small_and_oversized_boxes():
    gen = torch.Generator().manual_seed(3)
    scores, pred_boxes, points, strides, _ = random_case(gen, [1, 1, 1])
    targets = [
        {
            "boxes": torch.tensor([[0.0, 0.0, 12.0, 30.0], [IMAGE - 20.0, IMAGE - 9.0, IMAGE, IMAGE]]),
            "labels": torch.tensor([0, 1]),
        },
        {
            "boxes": torch.tensor([[41.0, 41.0, 43.0, 42.0]]),
            "labels": torch.tensor([3]),
        },  # smaller than a stride
        {
            "boxes": torch.tensor([[-20.0, -30.0, IMAGE + 40.0, IMAGE + 25.0]]),
            "labels": torch.tensor([1]),
        },  # larger than the image
    ]
    out, _ = run_and_compare(scores, pred_boxes, points, strides, targets)
    for i, t in enumerate(targets):  # every GT keeps at least one anchor here
        assert set(out.matched_gt[i][out.fg_mask[i]].tolist()) == set(range(len(t["boxes"])))


def test_nested_boxes_each_get_anchors():
    gen = torch.Generator().manual_seed(4)
    scores, pred_boxes, points, strides, _ = random_case(gen, [2])
    targets = [
        {
            "boxes": torch.tensor([[8.0, 8.0, 88.0, 88.0], [36.0, 36.0, 60.0, 60.0]]),
            "labels": torch.tensor([0, 1]),
        }
    ]
    out, _ = run_and_compare(scores, pred_boxes, points, strides, targets)
    assert set(out.matched_gt[0][out.fg_mask[0]].tolist()) == {0, 1}


def test_batched_box_iou_matches_torchvision():
    a = torch.rand(3, 5, 4) * 50
    a[..., 2:] += a[..., :2] + 0.5
    b = torch.rand(3, 7, 4) * 50
    b[..., 2:] += b[..., :2] + 0.5
    got = batched_box_iou(a, b)
    for i in range(3):
        torch.testing.assert_close(got[i], box_iou(a[i], b[i]))


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="center_radius"):
        SimOTAAssigner(center_radius=0)
    with pytest.raises(ValueError, match="candidate_topk"):
        SimOTAAssigner(candidate_topk=0)
    points, strides = grid()
    a = points.shape[0]
    scores, boxes = torch.rand(1, a, NUM_CLASSES), torch.rand(1, a, 4)
    gt, mask = torch.tensor([[[0.0, 0, 40, 40]]]), torch.ones(1, 1, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"gt_labels\[0, 0\] = 4"):
        SimOTAAssigner()(scores, boxes, points, strides, gt, torch.tensor([[4]]), mask)
    with pytest.raises(ValueError, match="points must have shape"):
        SimOTAAssigner()(scores, boxes, points[:-1], strides, gt, torch.tensor([[0]]), mask)
    with pytest.raises(ValueError, match=r"gt_boxes\[0, 0\]"):
        SimOTAAssigner()(scores, boxes, points, strides, gt * float("nan"), torch.tensor([[0]]), mask)
