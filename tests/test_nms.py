import pytest
import torch
from torchvision.ops import batched_nms, nms

from detforge.nms import grouped_nms


def _boxes(n: int, seed: int, size: float = 200.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * size
    wh = torch.rand(n, 2, generator=g) * 40 + 2
    # a few exact duplicates and equal scores: ties must not change what is kept
    scores = (torch.rand(n, generator=g) * 20).round() / 20
    return torch.cat([xy, xy + wh], 1), scores


def _per_group_loop(boxes, scores, groups, thr):
    """The reference: torchvision's nms on each group's boxes, one group at a time."""
    kept = []
    for g in groups.unique().tolist():
        idx = (groups == g).nonzero().flatten()
        kept.append(idx[nms(boxes[idx], scores[idx], thr)])
    return torch.cat(kept)


@pytest.mark.parametrize("n, num_groups", [(3000, 160), (1500, 1), (2500, 7), (400, 20)])
def test_grouped_nms_keeps_what_torchvision_keeps(n, num_groups):
    boxes, scores = _boxes(n, seed=n + num_groups)
    groups = torch.randint(0, num_groups, (n,), generator=torch.Generator().manual_seed(1)) * 3  # sparse ids
    keep = grouped_nms(boxes, scores, groups, 0.5)
    ref = _per_group_loop(boxes, scores, groups, 0.5)
    assert sorted(keep.tolist()) == sorted(ref.tolist())
    assert sorted(keep.tolist()) == sorted(batched_nms(boxes, scores, groups, 0.5).tolist())
    assert len(keep) < n  # some boxes are suppressed: the test exercises suppression
    # best first, equal scores by index (the CPU path above 1,000 boxes)
    kept_scores = scores[keep]
    assert (kept_scores[:-1] >= kept_scores[1:]).all()
    if n > 1000:
        ties = kept_scores[:-1] == kept_scores[1:]
        assert (keep[:-1][ties] < keep[1:][ties]).all()


def test_grouped_nms_empty_and_traced_fallback():
    empty = grouped_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5)
    assert empty.shape == (0,) and empty.dtype == torch.int64
    boxes, scores = _boxes(1200, seed=3)

    def fn(b, s, g):
        return grouped_nms(b, s, g, 0.5)

    # traced: no per-group loop with the traced input's group sizes baked into the graph
    traced = torch.jit.trace(fn, (boxes, scores, torch.arange(1200) % 5), check_trace=False)
    boxes2, scores2 = _boxes(1200, seed=4)
    groups2 = (torch.arange(1200) >= 100).long()  # other group sizes: 100 and 1,100
    assert sorted(traced(boxes2, scores2, groups2).tolist()) == sorted(fn(boxes2, scores2, groups2).tolist())
