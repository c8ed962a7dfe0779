"""Soft-NMS (``detforge.postprocess.batched_soft_nms``): parity with the ``ensemble_boxes`` package's
``soft_nms`` and with a plain sequential loop, float32 and float64."""

import numpy as np
import pytest
import torch
from ensemble_boxes import soft_nms as eb_soft_nms
from torchvision.ops import box_iou

from detforge.postprocess import batched_soft_nms


def clustered(n, num_groups, seed, dtype=torch.float32, scale=1.0):
    """``n`` boxes jittered around n // 8 objects (so they overlap), in [0, scale], with scores and groups."""
    gen = torch.Generator().manual_seed(seed)
    objects = max(1, n // 8)
    centre = 0.15 + 0.7 * torch.rand(objects, 2, generator=gen, dtype=torch.float64)
    size = 0.05 + 0.15 * torch.rand(objects, 2, generator=gen, dtype=torch.float64)
    which = torch.randint(0, objects, (n,), generator=gen)
    c = centre[which] + 0.2 * size[which] * torch.randn(n, 2, generator=gen, dtype=torch.float64)
    wh = size[which] * (1 + 0.2 * torch.randn(n, 2, generator=gen, dtype=torch.float64)).clamp(min=0.3)
    boxes = (torch.cat([c - wh / 2, c + wh / 2], 1).clamp(0, 1) * scale).to(dtype)
    scores = torch.rand(n, generator=gen, dtype=torch.float64).to(dtype)
    groups = torch.randint(0, num_groups, (n,), generator=gen)
    return boxes, scores, groups


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("method", ["gaussian", "linear"])
def test_keeps_the_boxes_ensemble_boxes_keeps(method, dtype):
    """ensemble_boxes takes boxes normalised to [0, 1] and returns the kept boxes with their ORIGINAL scores."""
    for seed in range(15):
        boxes, scores, labels = clustered(80, 3, seed, dtype)
        thresh = 0.02
        keep, decayed = batched_soft_nms(
            boxes, scores, labels, method, sigma=0.5, iou_thresh=0.3, score_thresh=thresh
        )
        assert decayed.dtype == dtype and keep.dtype == torch.int64
        assert (decayed[:-1] >= decayed[1:]).all() and (decayed <= scores[keep]).all()
        eb_boxes, eb_scores, eb_labels = eb_soft_nms(
            [boxes.numpy()],
            [scores.numpy()],
            [labels.numpy()],
            method={"linear": 1, "gaussian": 2}[method],
            iou_thr=0.3,
            sigma=0.5,
            thresh=thresh,
        )
        ours = np.concatenate(
            [boxes[keep].numpy(), scores[keep].numpy()[:, None], labels[keep].numpy()[:, None]], 1
        )
        theirs = np.concatenate([eb_boxes, eb_scores[:, None], eb_labels[:, None]], 1)
        ours, theirs = ours[np.lexsort(ours.T[::-1])], theirs[np.lexsort(theirs.T[::-1])]
        assert ours.shape == theirs.shape, f"seed {seed}: kept {len(ours)} vs ensemble_boxes {len(theirs)}"
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)


def sequential_soft_nms(boxes, scores, groups, method, sigma, iou_thresh, score_thresh):
    """The textbook loop, one group at a time: (index, decayed score) kept, best first."""
    iou = box_iou(boxes, boxes)
    kept = []
    for g in groups.unique().tolist():
        s = {
            i: float(scores[i])
            for i in (groups == g).nonzero().flatten().tolist()
            if scores[i] >= score_thresh
        }
        while s:
            best = max(s, key=lambda i: (s[i], -i))
            kept.append((best, s.pop(best)))
            for i in list(s):
                o = float(iou[best, i])
                s[i] *= (
                    float(np.exp(-o * o / sigma))
                    if method == "gaussian"
                    else (1 - o if o > iou_thresh else 1.0)
                )
                if s[i] < score_thresh:
                    del s[i]
    kept.sort(key=lambda t: -t[1])
    return kept


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("method", ["gaussian", "linear"])
def test_one_crowded_group_equals_the_sequential_loop(method, dtype):
    """300 boxes in one group, pixels: many parallel rounds, the same result as one box at a time."""
    boxes, scores, groups = clustered(300, 1, seed=7, dtype=dtype, scale=640.0)
    keep, decayed = batched_soft_nms(boxes, scores, groups, method, 0.5, 0.4, 0.01)
    ref = sequential_soft_nms(boxes, scores, groups, method, 0.5, 0.4, 0.01)
    assert keep.tolist() == [i for i, _ in ref]
    torch.testing.assert_close(decayed, torch.tensor([s for _, s in ref], dtype=dtype), rtol=1e-5, atol=1e-6)


def test_float64_boxes_with_float32_scores_and_groups_far_apart():
    """The reported failure ("scatter(): Expected self.dtype to be equal to src.dtype") and group ids that
    are large numbers (image * classes + class)."""
    boxes, scores, groups = clustered(120, 4, seed=3, dtype=torch.float64, scale=4000.0)
    keep64, s64 = batched_soft_nms(boxes, scores.float(), groups * 100_000)
    assert s64.dtype == torch.float32
    keep32, s32 = batched_soft_nms(boxes.float(), scores.float(), groups)
    assert keep64.tolist() == keep32.tolist()
    torch.testing.assert_close(s64, s32)


def test_below_threshold_and_empty():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]])
    keep, s = batched_soft_nms(
        boxes, torch.tensor([0.9, 0.8, 0.0005]), torch.zeros(3, dtype=torch.int64), "linear"
    )
    assert keep.tolist() == [0] and torch.equal(
        s, torch.tensor([0.9])
    )  # the copy decays to 0, the last is below
    keep, s = batched_soft_nms(boxes, torch.full((3,), 1e-4), torch.zeros(3, dtype=torch.int64))
    assert keep.shape == (0,) and s.shape == (0,)
    with pytest.raises(ValueError, match="gaussian"):
        batched_soft_nms(boxes, torch.ones(3), torch.zeros(3, dtype=torch.int64), "hard")


@pytest.mark.parametrize("method", ["gaussian", "linear"])
def test_exact_copies_and_a_zero_threshold_equal_the_sequential_loop(method):
    """Copies (IoU 1: linear decays a copy to exactly 0) and ties, with score_thresh 0 so that a score of 0
    stays alive: the parallel rounds keep what the textbook loop keeps, at the same scores."""
    boxes, scores, groups = clustered(60, 2, seed=11, scale=640.0)
    boxes = torch.cat([boxes, boxes[:20]])  # 20 exact copies
    scores = torch.cat([scores, scores[:10], scores[10:20] * 0.5])  # 10 tied copies
    groups = torch.cat([groups, groups[:20]])
    keep, decayed = batched_soft_nms(boxes, scores, groups, method, 0.5, 0.3, 0.0)
    ref = sequential_soft_nms(boxes, scores, groups, method, 0.5, 0.3, 0.0)
    assert sorted(keep.tolist()) == sorted(i for i, _ in ref) and len(keep) == boxes.shape[0]
    torch.testing.assert_close(decayed, torch.tensor([s for _, s in ref]), rtol=1e-5, atol=1e-6)
