"""merge_detections against SAHI's greedy loops written plainly (one box at a time, per class)."""

import pytest
import torch

from detforge.slicing import merge_detections


def metric(a, b, kind):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    area_a, area_b = (a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1])
    return inter / (area_a + area_b - inter) if kind == "iou" else inter / min(area_a, area_b)


def greedy_reference(boxes, scores, labels, merge, kind, thresh):
    """Per class: take the best remaining box, remove (nms) or absorb (nmm) every remaining box that matches
    the taken one; nmm then merges them best first into a union box while they still match it (SAHI)."""
    out = []
    for c in labels.unique().tolist():
        rest = sorted((i for i in range(len(boxes)) if labels[i] == c), key=lambda i: (-float(scores[i]), i))
        while rest:
            best, rest = rest[0], rest[1:]
            matched = [i for i in rest if metric(boxes[best].tolist(), boxes[i].tolist(), kind) >= thresh]
            rest = [i for i in rest if i not in matched]
            box = boxes[best].tolist()
            if merge == "nmm":
                for i in matched:
                    b = boxes[i].tolist()
                    if metric(box, b, kind) >= thresh:
                        box = [min(box[0], b[0]), min(box[1], b[1]), max(box[2], b[2]), max(box[3], b[3])]
            out.append((best, box))
    return sorted(out)


@pytest.mark.parametrize("merge", ["nms", "nmm"])
@pytest.mark.parametrize("kind", ["iou", "ios"])
def test_merge_equals_the_greedy_loop(merge, kind):
    for seed in range(6):
        gen = torch.Generator().manual_seed(seed)
        n = 150
        centre = torch.rand(15, 2, generator=gen) * 300
        which = torch.randint(0, 15, (n,), generator=gen)
        c = centre[which] + 6 * torch.randn(n, 2, generator=gen)
        wh = 10 + 30 * torch.rand(n, 2, generator=gen)
        boxes = torch.cat([c - wh / 2, c + wh / 2], 1)
        scores = torch.rand(n, generator=gen)
        labels = torch.randint(0, 3, (n,), generator=gen)
        got = merge_detections(boxes, scores, labels, merge, kind, 0.5)
        assert (got["scores"][:-1] >= got["scores"][1:]).all()
        ref = greedy_reference(boxes, scores, labels, merge, kind, 0.5)
        assert sorted(got["index"].tolist()) == [i for i, _ in ref]
        order = got["index"].argsort()
        torch.testing.assert_close(got["boxes"][order], torch.tensor([b for _, b in ref]))
        assert torch.equal(got["labels"], labels[got["index"]])
        assert torch.equal(got["scores"], scores[got["index"]])


def test_classes_never_merge_and_empty_input():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]])
    got = merge_detections(boxes, torch.tensor([0.9, 0.8]), torch.tensor([0, 1]), "nms", "iou", 0.5)
    assert got["index"].tolist() == [0, 1]
    got = merge_detections(boxes, torch.tensor([0.9, 0.8]), torch.tensor([1, 1]), "nms", "iou", 0.5)
    assert got["index"].tolist() == [0]
    empty = merge_detections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), "nmm")
    assert empty["boxes"].shape == (0, 4)
    with pytest.raises(ValueError, match="match_metric"):
        merge_detections(boxes, torch.ones(2), torch.zeros(2, dtype=torch.int64), "nms", "giou")
    with pytest.raises(ValueError, match="merge"):
        merge_detections(boxes, torch.ones(2), torch.zeros(2, dtype=torch.int64), "wbf")
