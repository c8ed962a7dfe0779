import math

import pytest
import torch
from torchvision.ops import sigmoid_focal_loss

from detforge.losses import QualityFocalLoss, quality_targets


def test_matches_formula():
    logits, target = torch.randn(6, 3) * 2, torch.rand(6, 3)
    per = QualityFocalLoss(reduction="none").compute(logits, target)
    for x, y, got in zip(logits.flatten().tolist(), target.flatten().tolist(), per.flatten().tolist()):
        s = 1 / (1 + math.exp(-x))
        want = -(abs(y - s) ** 2) * (y * math.log(s) + (1 - y) * math.log(1 - s))
        assert got == pytest.approx(want, rel=1e-5, abs=1e-7)
    assert torch.allclose(QualityFocalLoss()(logits, target), per.sum())


def test_hard_targets_equal_focal_without_alpha():
    logits, target = torch.randn(10, 4), (torch.rand(10, 4) > 0.7).float()
    ours = QualityFocalLoss(beta=2.0)(logits, target)
    assert torch.allclose(
        ours, sigmoid_focal_loss(logits, target, alpha=-1, gamma=2.0, reduction="sum"), atol=1e-6
    )


def test_quality_targets():
    labels = torch.tensor([1, -1, 0])
    scores = torch.tensor([0.7, 0.9, 0.2])
    want = torch.tensor([[0.0, 0.7], [0.0, 0.0], [0.2, 0.0]])
    assert torch.equal(quality_targets(labels, scores, 2), want)
    assert quality_targets(torch.zeros(0, dtype=torch.long), torch.zeros(0), 2).shape == (0, 2)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        quality_targets(torch.tensor([2]), torch.tensor([0.5]), 2)


def test_no_positives_finite_and_empty_connected():
    logits = torch.randn(5, 3, requires_grad=True)
    loss = QualityFocalLoss()(logits, torch.zeros(5, 3))
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    empty = torch.zeros(0, 3, requires_grad=True)
    zero = QualityFocalLoss(reduction="mean")(empty, torch.zeros(0, 3))
    assert zero.item() == 0.0 and zero.grad_fn is not None


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="beta"):
        QualityFocalLoss(beta=-2)
    with pytest.raises(ValueError, match="'none', 'mean', 'sum'"):
        QualityFocalLoss(reduction="x")
    with pytest.raises(ValueError, match="QualityFocalLoss"):
        QualityFocalLoss()(torch.zeros(2, 3), torch.zeros(2))
