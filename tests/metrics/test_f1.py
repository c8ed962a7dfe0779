"""The F1 curve and its optimum against a brute-force sweep over every distinct detection score, each threshold
matched from scratch with pycocotools' per-image, per-class loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from detforge.metrics.confusion import MatchInputs, matrix_of_pairs
from detforge.metrics.f1 import DEFAULT_CONF, f1_curve, summarize


def _xywh(boxes: torch.Tensor) -> np.ndarray:
    b = boxes.double().numpy().reshape(-1, 4)
    return np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], 1)


def _plain_counts(preds, targets, conf, num_classes):
    """TP, FP, FN per class of the detections with score >= ``conf``, matched as pycocotools' ``evaluateImg``
    does at IoU 0.5 (one image and class at a time, no cap on detections)."""
    tp, fp, fn = (np.zeros(num_classes, np.int64) for _ in range(3))
    for p, t in zip(preds, targets, strict=True):
        crowd = t.get("iscrowd", torch.zeros(len(t["labels"]))).bool().numpy()
        ignored = crowd | t.get("ignore", torch.zeros(len(t["labels"]))).bool().numpy()
        for c in range(num_classes):
            d = np.flatnonzero((p["labels"].numpy() == c) & (p["scores"].numpy() >= conf))
            d = d[np.argsort(-p["scores"].numpy()[d], kind="mergesort")]
            g = np.flatnonzero(t["labels"].numpy() == c)
            g = g[np.argsort(ignored[g], kind="mergesort")]  # counted objects first
            fn[c] += int((~ignored[g]).sum())
            if len(d) == 0:
                continue
            if len(g) == 0:
                fp[c] += len(d)
                continue
            ious = np.asarray(
                mask_utils.iou(_xywh(p["boxes"][d]), _xywh(t["boxes"][g]), crowd[g].astype(int).tolist())
            )
            taken = np.zeros(len(g), bool)
            for di in range(len(d)):
                best, m = min(0.5, 1 - 1e-10), -1
                for gi in range(len(g)):
                    if taken[gi] and not crowd[g[gi]]:
                        continue
                    if m > -1 and not ignored[g[m]] and ignored[g[gi]]:
                        break
                    if ious[di, gi] < best:
                        continue
                    best, m = ious[di, gi], gi
                if m == -1:
                    fp[c] += 1
                    continue
                taken[m] = True
                if not ignored[g[m]]:
                    tp[c] += 1
                    fn[c] -= 1
    return tp, fp, fn


def _random_set(seed: int, num_images: int = 25, num_classes: int = 3):
    g = torch.Generator().manual_seed(seed)
    preds, targets = [], []
    for i in range(num_images):
        n = 0 if i % 6 == 0 else int(torch.randint(1, 6, (1,), generator=g))
        xy = torch.rand(n, 2, generator=g) * 80
        boxes = torch.cat([xy, xy + 8 + torch.rand(n, 2, generator=g) * 30], 1)
        labels = torch.randint(0, num_classes, (n,), generator=g)
        target = {"boxes": boxes, "labels": labels}
        if i % 3 == 1:
            target["iscrowd"] = torch.rand(n, generator=g) < 0.25
        if i % 4 == 3:
            target["ignore"] = torch.rand(n, generator=g) < 0.25
        copies = boxes.repeat(2, 1)[: int(torch.randint(0, 2 * n + 1, (1,), generator=g))]
        extra_xy = torch.rand(3, 2, generator=g) * 80
        d_boxes = torch.cat(
            [copies + torch.randn(copies.shape, generator=g) * 3, torch.cat([extra_xy, extra_xy + 15], 1)]
        )
        d_labels = torch.cat(
            [labels.repeat(2)[: len(copies)], torch.randint(0, num_classes, (3,), generator=g)]
        )
        swap = torch.rand(len(d_labels), generator=g) < 0.15
        d_labels = torch.where(swap, (d_labels + 1) % num_classes, d_labels)
        scores = torch.randint(1, 60, (len(d_boxes),), generator=g).double() / 60  # repeated scores: ties
        preds.append({"boxes": d_boxes, "scores": scores, "labels": d_labels})
        targets.append(target)
    return preds, targets


@pytest.mark.parametrize("seed", range(3))
def test_optimum_equals_brute_force_sweep(seed):
    num_classes = 3
    preds, targets = _random_set(seed)
    curve = f1_curve(MatchInputs.from_lists(preds, targets), num_classes=num_classes)

    sweep = {}
    for conf in sorted({float(s) for p in preds for s in p["scores"]}):
        tp, fp, fn = (int(x.sum()) for x in _plain_counts(preds, targets, conf, num_classes))
        sweep[conf] = 2 * tp / (2 * tp + fp + fn)
    best_f1 = max(sweep.values())
    best_conf = min(c for c, f in sweep.items() if f == best_f1)
    assert 0.2 < best_f1 < 1
    assert curve.best_conf == best_conf and curve.best_f1 == pytest.approx(best_f1, abs=1e-12)

    for t in range(0, len(curve.confidences), 97):  # the grid: per class and pooled, as plainly counted
        conf = curve.confidences[t]
        tp, fp, fn = _plain_counts(preds, targets, conf, num_classes)
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = np.nan_to_num(2 * tp / (2 * tp + fp + fn))
            precision = np.nan_to_num(tp / (tp + fp))
        np.testing.assert_allclose(curve.f1[:, t], f1, atol=1e-12)
        np.testing.assert_allclose(curve.precision[:, t], precision, atol=1e-12)
        np.testing.assert_allclose(curve.recall[:, t], tp / (tp + fn), atol=1e-12)
        assert curve.overall_f1[t] == pytest.approx(2 * tp.sum() / (2 * tp.sum() + fp.sum() + fn.sum()))


def test_perfect_detector_and_no_detections():
    _, targets = _random_set(5)
    perfect = [
        {"boxes": t["boxes"], "scores": torch.full((len(t["labels"]),), 0.7), "labels": t["labels"]}
        for t in targets
    ]
    curve = f1_curve(MatchInputs.from_lists(perfect, targets), num_classes=3)
    assert curve.best_f1 == 1.0 and curve.best_conf == pytest.approx(0.7)
    assert (curve.overall_f1[curve.confidences <= 0.7] == 1).all()
    assert (curve.overall_f1[curve.confidences > 0.7] == 0).all()
    assert (curve.f1[:, 0][curve.num_objects > 0] == 1).all()

    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}
    inputs = MatchInputs.from_lists([empty] * len(targets), targets)
    curve = f1_curve(inputs, num_classes=3)
    assert curve.best_conf is None and curve.best_f1 == 0.0
    assert not curve.overall_f1.any() and not curve.f1.any() and not curve.precision.any()
    summary = summarize(inputs, num_classes=3)
    assert summary.confusion_conf == DEFAULT_CONF
    assert summary.results(["a", "b"])["class_names"] == ["a", "b", "2"]


def test_summary_matrix_is_at_the_best_confidence():
    preds, targets = _random_set(1)
    inputs = MatchInputs.from_lists(preds, targets)
    summary = summarize(inputs, num_classes=3)
    assert summary.confusion_conf == summary.f1.best_conf
    np.testing.assert_array_equal(summary.confusion_matrix, matrix_of_pairs(inputs, 3, summary.f1.best_conf))
    results = summary.results(["a", "b", "c"])
    assert results["best_conf"] == summary.f1.best_conf and results["f1"] == summary.f1.best_f1
    assert np.array(results["confusion_matrix"]).shape == (4, 4)
    with pytest.raises(ValueError, match="num_points must be >= 2"):
        f1_curve(inputs, num_points=1)


def test_ties_take_the_lowest_confidence():
    """F1 2/3 at 0.9 (1 TP, 1 FN), 0.6 (2 TP, 2 FP) and 0.5 (a detection on an ignored object counts for
    nothing): the lowest of the three wins, as in the brute-force sweep."""
    a, b, c, far = [0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50], [70, 70, 80, 80]
    target = {
        "boxes": torch.tensor([a, b, c], dtype=torch.float64),
        "labels": torch.tensor([0, 0, 0]),
        "ignore": torch.tensor([False, False, True]),
    }
    pred = {
        "boxes": torch.tensor([a, far, far, b, c], dtype=torch.float64),
        "scores": torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5], dtype=torch.float64),
        "labels": torch.tensor([0, 0, 0, 0, 0]),
    }
    curve = f1_curve(MatchInputs.from_lists([pred], [target]), num_classes=1)
    sweep = {}
    for conf in pred["scores"].tolist():
        tp, fp, fn = _plain_counts([pred], [target], conf, 1)
        sweep[conf] = float(2 * tp[0] / (2 * tp[0] + fp[0] + fn[0]))
    assert sweep[0.9] == sweep[0.6] == sweep[0.5] == max(sweep.values()) == pytest.approx(2 / 3)
    assert curve.best_conf == 0.5 and curve.best_f1 == pytest.approx(2 / 3)


def test_detection_map_summary_is_that_of_its_detections():
    """DetectionMAP.summary after compute(): the same curve and matrix as the detections it was given; the
    scalar keys of compute() are unchanged."""
    from detforge.metrics import DetectionMAP

    preds, targets = _random_set(2)
    metric = DetectionMAP()
    with pytest.raises(RuntimeError, match="compute"):
        metric.summary()
    metric.update(preds[:10], targets[:10])
    metric.update(preds[10:], targets[10:])
    keys = set(metric.compute())
    assert "best_conf" not in keys and "confusion_matrix" not in keys
    got = metric.summary(num_classes=3)
    expected = summarize(MatchInputs.from_lists(preds, targets), num_classes=3)
    assert got.f1.best_conf == expected.f1.best_conf and got.f1.best_f1 == expected.f1.best_f1
    np.testing.assert_array_equal(got.f1.f1, expected.f1.f1)
    np.testing.assert_array_equal(got.confusion_matrix, expected.confusion_matrix)
