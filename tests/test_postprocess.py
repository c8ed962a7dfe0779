import pytest
import torch
from torchvision.ops import batched_nms, box_iou

from detforge.assigners.fcos import FCOSAssigner
from detforge.postprocess import (
    batched_soft_nms,
    detect,
    detect_padded,
    distances_to_boxes,
    make_points,
    overlapping_pairs,
    select_candidates,
)


def random_dense(batch=3, level_sizes=(64, 16, 4), num_classes=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    p = sum(level_sizes)
    scores = torch.rand(batch, p, num_classes, generator=gen) ** 3
    xy = torch.rand(batch, p, 2, generator=gen) * 50 - 5
    wh = 2 + torch.rand(batch, p, 2, generator=gen) * 20
    boxes = torch.cat([xy, xy + wh], dim=-1)
    # Duplicate some boxes so NMS has work to do.
    boxes[:, 1::2] = boxes[:, ::2][:, : boxes[:, 1::2].shape[1]] + 0.5
    return scores, boxes, list(level_sizes)


def reference_detect(scores, boxes, level_sizes, image_sizes, score_thresh, nms_thresh, topk, max_det):
    """Per-image, per-level loop straight over torchvision ops."""
    results = []
    num_classes = scores.shape[-1]
    for i, (h, w) in enumerate(image_sizes):
        cand_boxes, cand_scores, cand_labels = [], [], []
        start = 0
        for size in level_sizes:
            flat = scores[i, start : start + size].flatten()
            s, idx = flat.topk(min(topk, flat.numel()))
            keep = s > score_thresh
            s, idx = s[keep], idx[keep]
            cand_boxes.append(boxes[i, start + idx // num_classes])
            cand_scores.append(s)
            cand_labels.append(idx % num_classes)
            start += size
        b, s, lab = torch.cat(cand_boxes), torch.cat(cand_scores), torch.cat(cand_labels)
        b = torch.stack(
            [b[:, 0].clamp(0, w), b[:, 1].clamp(0, h), b[:, 2].clamp(0, w), b[:, 3].clamp(0, h)], 1
        )
        keep = batched_nms(b, s, lab, nms_thresh)[:max_det]
        results.append({"boxes": b[keep], "scores": s[keep], "labels": lab[keep]})
    return results


def test_make_points_matches_the_fcos_assigner():
    sizes, strides = [(5, 7), (3, 4), (1, 2)], (8, 16, 32)
    points, point_strides = make_points(sizes, strides)
    ref_points, ref_strides = FCOSAssigner(strides, ((-1, 64), (64, 128), (128, 1e8))).points(sizes)
    torch.testing.assert_close(points, ref_points)
    torch.testing.assert_close(point_strides, ref_strides)


def test_distances_to_boxes():
    points = torch.tensor([[10.0, 20.0], [4.0, 4.0]])
    ltrb = torch.tensor([[[1.0, 2.0, 3.0, 4.0], [4.0, 4.0, 0.0, 1.0]]])
    expected = torch.tensor([[[9.0, 18.0, 13.0, 24.0], [0.0, 0.0, 4.0, 5.0]]])
    torch.testing.assert_close(distances_to_boxes(points, ltrb), expected)


@pytest.mark.parametrize("topk,max_det", [(1000, 100), (5, 7), (40, 3)])
def test_detect_equals_a_per_image_torchvision_loop(topk, max_det):
    scores, boxes, level_sizes = random_dense()
    image_sizes = [(40, 45), (30, 30), (50, 50)]
    ours = detect(scores, boxes, level_sizes, image_sizes, 0.2, 0.5, topk, max_det)
    ref = reference_detect(scores, boxes, level_sizes, image_sizes, 0.2, 0.5, topk, max_det)
    assert len(ours) == 3
    for a, b in zip(ours, ref):
        assert a["boxes"].shape[0] > 0
        torch.testing.assert_close(a["scores"], b["scores"])
        torch.testing.assert_close(a["boxes"], b["boxes"])
        assert torch.equal(a["labels"], b["labels"]) and a["labels"].dtype == torch.int64


def test_detect_with_no_candidates_gives_empty_dicts():
    scores, boxes, level_sizes = random_dense(batch=2)
    out = detect(scores * 0, boxes, level_sizes, [(50, 50)] * 2)
    assert [d["boxes"].shape for d in out] == [(0, 4), (0, 4)]
    assert out[0]["labels"].dtype == torch.int64


def test_detect_padded_matches_detect():
    scores, boxes, level_sizes = random_dense()
    sizes = torch.tensor([[40, 45], [30, 30], [50, 50]])
    lists = detect(scores, boxes, level_sizes, sizes, 0.2, 0.5, 50, 20)
    p_boxes, p_scores, p_labels, counts = detect_padded(scores, boxes, level_sizes, sizes, 0.2, 0.5, 50, 20)
    assert p_boxes.shape == (3, 20, 4) and p_scores.shape == (3, 20) and p_labels.shape == (3, 20)
    for i, d in enumerate(lists):
        n = int(counts[i])
        assert n == d["boxes"].shape[0]
        torch.testing.assert_close(p_boxes[i, :n], d["boxes"])
        torch.testing.assert_close(p_scores[i, :n], d["scores"])
        assert torch.equal(p_labels[i, :n], d["labels"])
        assert (p_labels[i, n:] == -1).all() and (p_scores[i, n:] == 0).all()


def test_select_candidates_checks_level_sizes():
    scores, boxes, _ = random_dense()
    with pytest.raises(ValueError, match="do not add up"):
        select_candidates(scores, boxes, [10, 10], 0.1, 10)


def reference_soft_nms(boxes, scores, groups, method, sigma, iou_thresh, score_thresh):
    """Textbook sequential soft-NMS, one group at a time."""
    kept = []
    for g in groups.unique():
        idx = (groups == g).nonzero().flatten().tolist()
        s = {i: float(scores[i]) for i in idx if scores[i] >= score_thresh}
        while s:
            best = max(s, key=lambda i: (s[i], -i))
            kept.append((best, s.pop(best)))
            for i in list(s):
                iou = float(box_iou(boxes[best : best + 1], boxes[i : i + 1]))
                if method == "gaussian":
                    s[i] *= float(torch.exp(torch.tensor(-iou * iou / sigma)))
                elif iou > iou_thresh:
                    s[i] *= 1 - iou
                if s[i] < score_thresh:
                    del s[i]
    kept.sort(key=lambda t: -t[1])
    return kept


@pytest.mark.parametrize("method", ["gaussian", "linear"])
def test_soft_nms_equals_sequential_reference(method):
    gen = torch.Generator().manual_seed(1)
    xy = torch.rand(40, 2, generator=gen) * 30
    boxes = torch.cat([xy, xy + 5 + torch.rand(40, 2, generator=gen) * 10], 1)
    scores = torch.rand(40, generator=gen)
    groups = torch.randint(0, 3, (40,), generator=gen)
    keep, new_scores = batched_soft_nms(boxes, scores, groups, method, 0.5, 0.3, 0.05)
    ref = reference_soft_nms(boxes, scores, groups, method, 0.5, 0.3, 0.05)
    assert keep.tolist() == [i for i, _ in ref]
    torch.testing.assert_close(new_scores, torch.tensor([s for _, s in ref]), rtol=1e-5, atol=1e-6)
    assert len(keep) < 40  # some boxes decayed below the threshold


def test_soft_nms_through_detect_keeps_more_than_hard_nms():
    scores, boxes, level_sizes = random_dense()
    sizes = [(50, 50)] * 3
    hard = detect(scores, boxes, level_sizes, sizes, 0.01, 0.5, 30, 1000)
    soft = detect(scores, boxes, level_sizes, sizes, 0.01, 0.5, 30, 1000, nms_method="linear")
    assert sum(len(d["scores"]) for d in soft) > sum(len(d["scores"]) for d in hard)
    for d in soft:
        assert (d["scores"][:-1] >= d["scores"][1:]).all()
    with pytest.raises(ValueError, match=r"one of \('hard', 'gaussian', 'linear', 'none'\)"):
        detect(scores, boxes, level_sizes, sizes, nms_method="fast")


def test_soft_nms_empty():
    keep, s = batched_soft_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64))
    assert keep.shape == (0,) and s.shape == (0,)


@pytest.mark.parametrize("seed", range(4))
def test_overlapping_pairs_equal_the_n_by_n_table(seed):
    """Every same-group pair with a non-empty intersection, once, against torchvision's full IoU table:
    boxes of mixed sizes (a few spanning many bands), touching edges (no intersection), zero-height boxes
    and far-apart group ids."""
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(300, 2, generator=gen) * 500
    wh = torch.rand(300, 2, generator=gen) * 40 + 1
    wh[:10] *= 10  # tall and wide boxes cross many bands
    boxes = torch.cat([xy, xy + wh], 1).double()
    boxes[10:20, 3] = boxes[10:20, 1]  # zero height: intersect nothing
    boxes[20] = boxes[21] + torch.tensor([0.0, 0.0, 0.0, 0.0])  # a duplicate
    boxes[22] = torch.cat([boxes[23, 2:3], boxes[23, 1:2], boxes[23, 2:3] + 5, boxes[23, 3:4]])  # touches 23
    groups = torch.randint(0, 3, (300,), generator=gen) * 1_000_003
    groups[22] = groups[23]
    groups[20] = groups[21]
    i, j = overlapping_pairs(boxes.numpy(), groups.numpy())
    ours = {(min(a, b), max(a, b)) for a, b in zip(i.tolist(), j.tolist(), strict=True)}
    assert len(ours) == len(i), "a pair listed twice"
    lt = torch.maximum(boxes[:, None, :2], boxes[None, :, :2])
    rb = torch.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    meet = ((rb - lt) > 0).all(-1) & (groups[:, None] == groups[None, :])  # [N, N]
    ref = {(a, b) for a, b in meet.triu(1).nonzero().tolist()}
    assert ours == ref and (20, 21) in ref and (22, 23) not in ref
