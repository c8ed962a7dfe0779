import itertools
import math

import pytest
import torch

from detforge.assigners.hungarian import HungarianMatcher


def _cost(logits_q, box_q, label, box_t, weights) -> float:
    """Matching cost of one query and one target, from the definitions, in plain Python."""
    exp = [math.exp(v) for v in logits_q]
    prob = exp[label] / sum(exp)

    def xyxy(b):
        cx, cy, w, h = b
        return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2

    a, b = xyxy(box_q), xyxy(box_t)
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    giou = inter / union - (hull - union) / hull
    l1 = sum(abs(p - q) for p, q in zip(box_q, box_t))
    wc, wb, wg = weights
    return -wc * prob + wb * l1 - wg * giou


def _brute_force(logits, boxes, target, weights):
    """Cheapest assignment over every injective map of targets to queries: (queries, targets, cost matrix)."""
    num_q, n = logits.shape[0], target["boxes"].shape[0]
    cost = [
        [
            _cost(
                logits[q].tolist(),
                boxes[q].tolist(),
                int(target["labels"][j]),
                target["boxes"][j].tolist(),
                weights,
            )
            for j in range(n)
        ]
        for q in range(num_q)
    ]
    best = min(
        itertools.permutations(range(num_q), n), key=lambda perm: sum(cost[q][j] for j, q in enumerate(perm))
    )
    pairs = sorted((q, j) for j, q in enumerate(best))
    return [p[0] for p in pairs], [p[1] for p in pairs], cost


def _random_boxes(n: int) -> torch.Tensor:
    cxcy = torch.rand(n, 2) * 0.8 + 0.1
    wh = torch.rand(n, 2) * 0.3 + 0.02
    return torch.cat([cxcy, wh], 1)


@pytest.mark.parametrize("weights", [(1.0, 5.0, 2.0), (2.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)])
def test_matches_brute_force_over_permutations(weights):
    gen = torch.Generator().manual_seed(3)
    num_q, num_c = 5, 4
    counts = [0, 1, 3, 5, 2]  # images with different GT counts, one with none, one with as many as queries
    logits = torch.randn(len(counts), num_q, num_c, generator=gen) * 2
    boxes = _random_boxes(len(counts) * num_q).view(len(counts), num_q, 4)
    targets = [
        {"labels": torch.randint(0, num_c, (n,), generator=gen), "boxes": _random_boxes(n)} for n in counts
    ]
    matcher = HungarianMatcher(*weights)
    out = matcher(logits, boxes, targets)
    assert len(out) == len(counts)
    for i, (pred_idx, tgt_idx) in enumerate(out):
        assert pred_idx.dtype == torch.int64 and tgt_idx.dtype == torch.int64
        want_q, want_t, cost = _brute_force(logits[i], boxes[i], targets[i], weights)
        assert pred_idx.tolist() == sorted(pred_idx.tolist())
        assert sorted(tgt_idx.tolist()) == list(range(counts[i])) and len(set(pred_idx.tolist())) == counts[i]
        got_cost = sum(cost[q][j] for q, j in zip(pred_idx.tolist(), tgt_idx.tolist()))
        want_cost = sum(cost[q][j] for q, j in zip(want_q, want_t))
        assert got_cost == pytest.approx(want_cost, abs=1e-5), (i, weights)
        if (
            weights[1] or weights[2]
        ):  # box costs make the optimum unique; class cost alone ties on equal labels
            assert pred_idx.tolist() == want_q and tgt_idx.tolist() == want_t, (i, weights)


def test_cost_matrix_matches_definition():
    logits, boxes = torch.randn(2, 3, 4), _random_boxes(6).view(2, 3, 4)
    targets = [
        {"labels": torch.tensor([1, 3]), "boxes": _random_boxes(2)},
        {"labels": torch.tensor([0]), "boxes": _random_boxes(1)},
    ]
    cost = HungarianMatcher().cost_matrix(logits, boxes, targets)
    assert cost.shape == (2, 3, 2)
    for i, t in enumerate(targets):
        for q in range(3):
            for j in range(len(t["labels"])):
                want = _cost(
                    logits[i, q].tolist(),
                    boxes[i, q].tolist(),
                    int(t["labels"][j]),
                    t["boxes"][j].tolist(),
                    (1, 5, 2),
                )
                assert cost[i, q, j].item() == pytest.approx(want, abs=1e-5)


def test_obvious_matching():
    """Each target sits on one query with a confident right class: the matching is the identity, permuted."""
    tgt_boxes = torch.tensor([[0.2, 0.2, 0.1, 0.1], [0.7, 0.6, 0.3, 0.2], [0.5, 0.9, 0.05, 0.05]])
    perm = torch.tensor([2, 0, 3])  # target j sits on query perm[j]
    boxes = _random_boxes(4)[None].clone()
    boxes[0, perm] = tgt_boxes
    logits = torch.zeros(1, 4, 3)
    labels = torch.tensor([1, 0, 2])
    logits[0, perm, labels] = 10.0
    pred_idx, tgt_idx = HungarianMatcher()(logits, boxes, [{"labels": labels, "boxes": tgt_boxes}])[0]
    assert pred_idx.tolist() == [0, 2, 3] and tgt_idx.tolist() == [1, 0, 2]


def test_no_targets_anywhere_gives_empty_long_indices():
    out = HungarianMatcher()(
        torch.randn(2, 3, 5),
        _random_boxes(6).view(2, 3, 4),
        [{"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}] * 2,
    )
    for pred_idx, tgt_idx in out:
        assert pred_idx.shape == (0,) and tgt_idx.shape == (0,)
        assert pred_idx.dtype == torch.int64 and tgt_idx.dtype == torch.int64


def test_boxes_on_the_image_border_and_degenerate_predictions():
    tgt = {
        "labels": torch.tensor([0, 1]),
        "boxes": torch.tensor([[0.05, 0.05, 0.1, 0.1], [0.9, 0.5, 0.2, 1.0]]),
    }
    boxes = torch.tensor([[[0.5, 0.5, 0.0, 0.0], [0.06, 0.05, 0.1, 0.1], [0.9, 0.5, 0.2, 0.99]]])
    pred_idx, tgt_idx = HungarianMatcher()(torch.zeros(1, 3, 2), boxes, [tgt])[0]
    assert pred_idx.tolist() == [1, 2] and tgt_idx.tolist() == [0, 1]


def test_more_targets_than_queries_warns_and_matches_all_queries():
    tgt = {"labels": torch.tensor([0, 1, 0]), "boxes": _random_boxes(3)}
    with pytest.warns(UserWarning, match="image 0 of the batch has 3 targets but only 2 queries"):
        pred_idx, tgt_idx = HungarianMatcher()(torch.randn(1, 2, 2), _random_boxes(2)[None], [tgt])[0]
    assert sorted(pred_idx.tolist()) == [0, 1] and len(set(tgt_idx.tolist())) == 2


def test_bad_input_raises_clearly():
    logits, boxes = torch.randn(1, 3, 2), _random_boxes(3)[None]
    with pytest.raises(ValueError, match=r"target 0 has labels in \[0, 2\], outside the 2 classes"):
        HungarianMatcher()(logits, boxes, [{"labels": torch.tensor([0, 2]), "boxes": _random_boxes(2)}])
    with pytest.raises(ValueError, match="target 0 needs 'boxes' and 'labels'"):
        HungarianMatcher()(logits, boxes, [{"boxes": _random_boxes(2)}])
    with pytest.raises(ValueError, match="2 target dicts for a batch of 1"):
        HungarianMatcher()(logits, boxes, [{"labels": torch.tensor([0]), "boxes": _random_boxes(1)}] * 2)
    with pytest.raises(ValueError, match="pred_boxes must be"):
        HungarianMatcher()(logits, boxes[:, :2], [{"labels": torch.tensor([0]), "boxes": _random_boxes(1)}])
    with pytest.raises(ValueError, match="non-finite"):
        HungarianMatcher()(
            logits, boxes, [{"labels": torch.tensor([0]), "boxes": torch.full((1, 4), float("nan"))}]
        )
    with pytest.raises(ValueError, match=">= 0"):
        HungarianMatcher(cost_class=-1)
    with pytest.raises(ValueError, match="at least one"):
        HungarianMatcher(0, 0, 0)


@pytest.mark.parametrize("class_cost", ["softmax", "focal"])
def test_match_padded_equals_list_of_targets(class_cost):
    """Padded targets with holes in the mask match like the list of the real targets, with padded indices."""
    gen = torch.Generator().manual_seed(7)
    counts = [2, 0, 3]
    logits, boxes = torch.randn(3, 4, 3, generator=gen), _random_boxes(12).view(3, 4, 4)
    targets = [{"labels": torch.randint(0, 3, (n,), generator=gen), "boxes": _random_boxes(n)} for n in counts]
    tgt_boxes, tgt_labels = torch.zeros(3, 5, 4), torch.full((3, 5), -1)
    mask = torch.zeros(3, 5, dtype=torch.bool)
    slots = [[4, 1], [], [0, 2, 3]]  # where each image's real targets sit among the padded columns
    for i, (t, s) in enumerate(zip(targets, slots)):
        tgt_boxes[i, s], tgt_labels[i, s], mask[i, s] = t["boxes"], t["labels"], True
    matcher = HungarianMatcher(class_cost=class_cost)
    batch_idx, pred_idx, tgt_idx = matcher.match_padded(logits, boxes, tgt_boxes, tgt_labels, mask)
    for i, (want_q, want_t) in enumerate(matcher(logits, boxes, targets)):
        keep = batch_idx == i
        assert pred_idx[keep].tolist() == want_q.tolist()
        assert tgt_idx[keep].tolist() == [slots[i][j] for j in want_t.tolist()]


def test_focal_class_cost_matches_definition():
    logits, boxes = torch.randn(1, 3, 2), _random_boxes(3)[None]
    tgt = {"labels": torch.tensor([1]), "boxes": boxes[0, :1]}  # query 0 sits on the target: box costs 0
    cost = HungarianMatcher(0.5, 0.0, 0.0, class_cost="focal").cost_matrix(logits, boxes, [tgt])
    p = logits[0, :, 1].sigmoid()
    want = 0.5 * (0.25 * (1 - p) ** 2 * -p.log() - 0.75 * p**2 * -(1 - p).log())
    torch.testing.assert_close(cost[0, :, 0], want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="class_cost"):
        HungarianMatcher(class_cost="sigmoid")
