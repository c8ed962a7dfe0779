"""Penalty-reduced focal loss against a plain per-pixel loop of the CornerNet / CenterNet formula."""

from __future__ import annotations

import math

import pytest
import torch

from detforge.losses.heatmap_focal import HeatmapFocalLoss


def reference(logits: torch.Tensor, target: torch.Tensor, alpha: float, beta: float) -> float:
    total = 0.0
    for x, y in zip(logits.flatten().tolist(), target.flatten().tolist()):
        p = 1.0 / (1.0 + math.exp(-x))
        if y == 1.0:
            total -= (1 - p) ** alpha * math.log(p)
        else:
            total -= (1 - y) ** beta * p**alpha * math.log(1 - p)
    return total


@pytest.mark.parametrize("alpha, beta", [(2.0, 4.0), (1.5, 3.0)])
def test_matches_the_per_pixel_loop(alpha, beta):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, 7, generator=g, dtype=torch.float64) * 3
    target = torch.rand(2, 3, 5, 7, generator=g, dtype=torch.float64) ** 3
    target[0, 1, 2, 3] = target[1, 2, 4, 6] = target[1, 0, 0, 0] = 1.0
    loss = HeatmapFocalLoss(alpha, beta)(logits, target)
    assert float(loss) == pytest.approx(reference(logits, target, alpha, beta), rel=1e-5)
    per_pixel = HeatmapFocalLoss(alpha, beta, reduction="none")(logits, target)
    assert per_pixel.shape == logits.shape and float(per_pixel.sum()) == pytest.approx(float(loss), rel=1e-6)


def test_finite_for_saturated_logits_and_zero_at_a_perfect_heatmap():
    logits = torch.tensor([40.0, -40.0, -40.0, 200.0], requires_grad=True)
    target = torch.tensor([1.0, 0.0, 0.5, 1.0])
    loss = HeatmapFocalLoss()(logits, target)
    loss.backward()
    assert torch.isfinite(loss) and float(loss) < 1e-12 and torch.isfinite(logits.grad).all()


def test_validates():
    with pytest.raises(ValueError, match="alpha"):
        HeatmapFocalLoss(alpha=-1)
    with pytest.raises(ValueError, match="shape"):
        HeatmapFocalLoss()(torch.zeros(2, 3), torch.zeros(3, 2))
