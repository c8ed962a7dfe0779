import math

import pytest
import torch
from torch.nn.functional import gaussian_nll_loss

from detforge.losses import UncertaintyLoss


def test_matches_formula():
    mean, log_var, target = torch.randn(5, 4), torch.randn(5, 4), torch.randn(5, 4)
    per = UncertaintyLoss(reduction="none").compute(mean, log_var, target)
    for i in range(5):
        for j in range(4):
            m, s, t = mean[i, j].item(), log_var[i, j].item(), target[i, j].item()
            assert per[i, j].item() == pytest.approx(
                0.5 * math.exp(-s) * (m - t) ** 2 + 0.5 * s, rel=1e-5, abs=1e-6
            )
    assert torch.allclose(UncertaintyLoss()(mean, log_var, target), per.mean())
    assert torch.allclose(UncertaintyLoss(reduction="sum")(mean, log_var, target), per.sum())


def test_equals_torch_gaussian_nll_within_clamp():
    mean, log_var, target = torch.randn(8, 4), torch.randn(8, 4), torch.randn(8, 4)
    ours = UncertaintyLoss()(mean, log_var, target)
    assert torch.allclose(ours, gaussian_nll_loss(mean, target, log_var.exp(), eps=0.0), atol=1e-6)


def test_log_variance_is_clamped():
    mean, target = torch.zeros(2, 1), torch.full((2, 1), 3.0)
    log_var = torch.tensor([[-1000.0], [1000.0]], requires_grad=True)
    loss = UncertaintyLoss(log_var_min=-5, log_var_max=5, reduction="none")(mean, log_var, target)
    assert torch.allclose(
        loss[:, 0], torch.tensor([0.5 * math.exp(5) * 9 - 2.5, 0.5 * math.exp(-5) * 9 + 2.5])
    )
    loss.sum().backward()
    assert torch.isfinite(log_var.grad).all()


def test_optimum_is_the_squared_error():
    """d/ds = 0 at s = log((p - t)^2): the model learns its own error."""
    s = torch.tensor([math.log(4.0)], requires_grad=True)
    UncertaintyLoss()(torch.tensor([1.0]), s, torch.tensor([3.0])).backward()
    assert abs(s.grad.item()) < 1e-6


def test_empty_and_weighted():
    m = torch.zeros(0, 4, requires_grad=True)
    loss = UncertaintyLoss()(m, torch.zeros(0, 4), torch.zeros(0, 4))
    assert loss.item() == 0.0 and loss.grad_fn is not None
    loss.backward()
    mean, log_var, target = torch.randn(3, 4), torch.randn(3, 4), torch.randn(3, 4)
    w = torch.tensor([1.0, 0.0, 3.0])
    per = UncertaintyLoss(reduction="none")(mean, log_var, target)
    assert torch.allclose(
        UncertaintyLoss(reduction="sum")(mean, log_var, target, w), (per * w[:, None]).sum()
    )


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="log_var_min"):
        UncertaintyLoss(log_var_min=3, log_var_max=1)
    with pytest.raises(ValueError, match="'none', 'mean', 'sum'"):
        UncertaintyLoss(reduction="max")
    with pytest.raises(ValueError, match="UncertaintyLoss"):
        UncertaintyLoss()(torch.zeros(2, 4), torch.zeros(2, 3), torch.zeros(2, 4))
