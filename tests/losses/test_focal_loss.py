import math

import pytest
import torch
from torchvision.ops import sigmoid_focal_loss

from detforge.losses import FocalLoss, labels_to_one_hot


def _formula(logits: torch.Tensor, targets: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    """FL = -alpha_t (1 - p_t)^gamma log(p_t), generalised to soft targets as in torchvision (elementwise)."""
    out = torch.empty_like(logits, dtype=torch.float64)
    for i, (x, y) in enumerate(zip(logits.flatten().tolist(), targets.flatten().tolist())):
        p = 1 / (1 + math.exp(-x))
        ce = -(y * math.log(p) + (1 - y) * math.log(1 - p))
        p_t = p * y + (1 - p) * (1 - y)
        a_t = 1.0 if alpha < 0 else alpha * y + (1 - alpha) * (1 - y)
        out.view(-1)[i] = a_t * (1 - p_t) ** gamma * ce
    return out.to(logits.dtype)


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (0.5, 0.0), (-1, 1.5)])
@pytest.mark.parametrize("kind", ["binary", "one_hot", "soft"])
def test_matches_formula_and_torchvision(alpha, gamma, kind):
    logits = torch.randn(7, 3) * 3
    if kind == "binary":
        targets = (torch.rand(7, 3) > 0.6).float()
    elif kind == "one_hot":
        targets = labels_to_one_hot(torch.tensor([0, 2, -1, 1, 1, -1, 0]), 3)
    else:
        targets = torch.rand(7, 3)
    loss = FocalLoss.with_params(alpha, gamma).compute(logits, targets)
    assert torch.allclose(loss, sigmoid_focal_loss(logits, targets, alpha, gamma, "sum"), atol=1e-6)
    assert torch.allclose(loss, _formula(logits, targets, alpha, gamma).sum(), atol=1e-5)
    per = FocalLoss(alpha=alpha, gamma=gamma, reduction="none")(logits, targets)
    assert torch.allclose(per, _formula(logits, targets, alpha, gamma), atol=1e-6)
    mean = FocalLoss(alpha=alpha, gamma=gamma, reduction="mean")(logits, targets)
    assert torch.allclose(mean, per.mean())


def test_one_dim_logits():
    logits, targets = torch.randn(5), torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0])
    assert torch.allclose(FocalLoss()(logits, targets), sigmoid_focal_loss(logits, targets, reduction="sum"))


def test_integer_labels_equal_one_hot():
    logits = torch.randn(4, 3)
    labels = torch.tensor([2, -1, 0, 1])
    one_hot = torch.tensor([[0, 0, 1], [0, 0, 0], [1, 0, 0], [0, 1, 0]], dtype=torch.float32)
    assert torch.equal(labels_to_one_hot(labels, 3), one_hot)
    assert torch.allclose(FocalLoss()(logits, labels), FocalLoss()(logits, one_hot))


def test_bool_targets_are_binary():
    logits, targets = torch.randn(4, 3), torch.rand(4, 3) > 0.5
    assert torch.allclose(FocalLoss()(logits, targets), FocalLoss()(logits, targets.float()))


def test_integer_labels_out_of_range_raise():
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        FocalLoss()(torch.randn(2, 3), torch.tensor([0, 3]))


def test_no_positives_is_finite_and_backprops():
    logits = torch.randn(6, 4, requires_grad=True)
    loss = FocalLoss()(logits, torch.zeros(6, 4))
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_empty_input_gives_connected_zero(reduction):
    logits = torch.zeros(0, 3, requires_grad=True)
    loss = FocalLoss(reduction=reduction)(logits, torch.zeros(0, 3))
    assert loss.item() == 0.0 and loss.grad_fn is not None
    loss.backward()
    assert logits.grad.shape == (0, 3)


def test_row_weight_scales_rows():
    logits, targets = torch.randn(3, 2), torch.rand(3, 2)
    w = torch.tensor([1.0, 0.0, 2.0])
    per = FocalLoss(reduction="none")(logits, targets)
    assert torch.allclose(FocalLoss()(logits, targets, w), (per * w[:, None]).sum())
    mean = FocalLoss(reduction="mean")(logits, targets, w)
    assert torch.allclose(mean, (per * w[:, None]).sum() / (w.sum() * 2))


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="'none', 'mean', 'sum'"):
        FocalLoss(reduction="avg")
    with pytest.raises(ValueError, match="alpha"):
        FocalLoss(alpha=1.5)
    with pytest.raises(ValueError, match="gamma"):
        FocalLoss(gamma=-1)
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(2, 4\)"):
        FocalLoss()(torch.randn(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="weight shape"):
        FocalLoss()(torch.randn(2, 3), torch.zeros(2, 3), torch.ones(3))
