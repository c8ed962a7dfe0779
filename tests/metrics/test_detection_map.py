"""DetectionMAP against torchmetrics' MeanAveragePrecision (pycocotools backend), and its state handling."""

from __future__ import annotations

import pytest
import torch
from torchmetrics.detection import MeanAveragePrecision

from detforge.metrics import DetectionMAP


def random_batch(seed: int, num_images: int = 5, num_classes: int = 4) -> tuple[list[dict], list[dict]]:
    """Integer-pixel boxes (exact in float32, so both sides see the same numbers), crowds, empty images."""
    g = torch.Generator().manual_seed(seed)
    preds, targets = [], []
    for _ in range(num_images):
        n = int(torch.randint(0, 6, (1,), generator=g))
        xy = torch.randint(0, 300, (n, 2), generator=g).float()
        wh = torch.randint(4, 150, (n, 2), generator=g).float()
        boxes = torch.cat([xy, xy + wh], 1)  # [n, 4] xyxy
        labels = torch.randint(0, num_classes - 1, (n,), generator=g)  # the last class never has ground truth
        crowd = torch.rand(n, generator=g) < 0.15
        targets.append({"boxes": boxes, "labels": labels, "iscrowd": crowd.long()})
        k = int(torch.randint(0, 3, (1,), generator=g))
        jitter = torch.randint(-6, 7, (n * k, 4), generator=g).float()
        d_boxes = boxes.repeat(k, 1) + jitter
        d_boxes[:, 2:] = torch.maximum(d_boxes[:, 2:], d_boxes[:, :2] + 1)
        d_labels = labels.repeat(k)
        m = int(torch.randint(0, 4, (1,), generator=g))
        r_xy = torch.randint(0, 300, (m, 2), generator=g).float()
        r_boxes = torch.cat([r_xy, r_xy + torch.randint(4, 120, (m, 2), generator=g).float()], 1)
        preds.append(
            {
                "boxes": torch.cat([d_boxes, r_boxes]),
                "scores": torch.round(torch.rand(n * k + m, generator=g) * 10) / 10,  # ties
                "labels": torch.cat([d_labels, torch.randint(0, num_classes, (m,), generator=g)]),
            }
        )
    return preds, targets


@pytest.mark.parametrize("seed", range(6))
def test_matches_torchmetrics_pycocotools_backend(seed: int) -> None:
    preds, targets = random_batch(seed)
    ours = DetectionMAP(class_metrics=True)
    ref = MeanAveragePrecision(backend="pycocotools", class_metrics=True)
    for half in (slice(0, 2), slice(2, None)):  # two updates
        ours.update(preds[half], targets[half])
        ref.update(preds[half], targets[half])
    got, want = ours.compute(), ref.compute()
    for key in (
        "map",
        "map_50",
        "map_75",
        "map_small",
        "map_medium",
        "map_large",
        "mar_1",
        "mar_10",
        "mar_100",
    ):
        assert got[key].item() == pytest.approx(want[key].item(), abs=1e-6), key
    for key in ("mar_small", "mar_medium", "mar_large"):
        assert got[key].item() == pytest.approx(want[key].item(), abs=1e-6), key
    assert torch.equal(got["classes"], want["classes"].int())
    torch.testing.assert_close(got["map_per_class"], want["map_per_class"].float(), atol=1e-6, rtol=0)
    torch.testing.assert_close(got["mar_100_per_class"], want["mar_100_per_class"].float(), atol=1e-6, rtol=0)


def test_merged_and_synced_states_give_the_same_result() -> None:
    """Two ranks' states, concatenated as DDP sync does, evaluate like one metric that saw everything in that
    order (image order breaks score ties, as in pycocotools)."""
    preds, targets = random_batch(11, num_images=6)
    whole = DetectionMAP()
    whole.update(preds, targets)
    expected = whole.compute()
    rank0, rank1 = DetectionMAP(), DetectionMAP()
    rank0.update(preds[:4], targets[:4])
    rank1.update(preds[4:], targets[4:])
    rank0.merge_state(rank1)  # torchmetrics puts the incoming state first
    merged = rank0.compute()
    reordered = DetectionMAP()
    reordered.update(preds[4:] + preds[:4], targets[4:] + targets[:4])
    expected_merged = reordered.compute()
    synced = DetectionMAP()
    synced.update(preds[:4], targets[:4])
    synced.update(preds[4:], targets[4:])
    for name in synced._defaults:  # what torchmetrics' sync leaves behind: one concatenated tensor per state
        setattr(synced, name, torch.cat(getattr(synced, name)))
    got = synced.compute()
    for key, value in expected.items():
        assert torch.equal(merged[key], expected_merged[key]), key
        assert torch.equal(got[key], value), key


def test_empty_and_reset() -> None:
    metric = DetectionMAP()
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}
    metric.update([empty], [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}])
    assert metric.compute()["map"].item() == -1.0
    metric.reset()
    box = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    metric.update(
        [{"boxes": box, "scores": torch.tensor([0.9]), "labels": torch.tensor([0])}],
        [{"boxes": box, "labels": torch.tensor([0])}],
    )
    assert metric.compute()["map"].item() == pytest.approx(1.0)


def test_ignore_flag_and_bad_input() -> None:
    box = torch.tensor([[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]])
    metric = DetectionMAP()
    pred = {"boxes": box[:1], "scores": torch.tensor([0.9]), "labels": torch.tensor([0])}
    metric.update(
        [pred], [{"boxes": box, "labels": torch.tensor([0, 0]), "ignore": torch.tensor([False, True])}]
    )
    assert metric.compute()["mar_100"].item() == pytest.approx(1.0)  # the ignored object is not missed
    with pytest.raises(ValueError, match="box_format must be one of"):
        DetectionMAP(box_format="xyzw")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="prediction 0 has no 'scores'"):
        metric.update(
            [{"boxes": box, "labels": torch.tensor([0, 0])}], [{"boxes": box, "labels": torch.tensor([0, 0])}]
        )


def test_box_format_xywh_equals_xyxy() -> None:
    preds, targets = random_batch(3)

    def to_xywh(items: list[dict]) -> list[dict]:
        return [
            {**d, "boxes": torch.cat([d["boxes"][:, :2], d["boxes"][:, 2:] - d["boxes"][:, :2]], 1)}
            for d in items
        ]

    a, b = DetectionMAP(), DetectionMAP(box_format="xywh")
    a.update(preds, targets)
    b.update(to_xywh(preds), to_xywh(targets))
    got, want = b.compute(), a.compute()
    for key, value in want.items():
        assert torch.equal(got[key], value), key
