"""fold_batchnorm: which conv / BatchNorm pairs fold, and that folded ones give eval's outputs."""

from __future__ import annotations

import pytest
import torch
from timm.layers import BatchNormAct2d
from torch import nn

from detforge.models.fold_batchnorm import fold_batchnorm


def _randomise(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        c = bn.num_features
        bn.running_mean.copy_(torch.randn(c, generator=g))
        bn.running_var.copy_(0.2 + torch.rand(c, generator=g))
        bn.weight.data.copy_(0.5 + torch.rand(c, generator=g))
        bn.bias.data.copy_(torch.randn(c, generator=g))
    return model.eval()


def _check(model: nn.Module, expected_folded: int) -> None:
    x = torch.rand(2, 3, 12, 12)
    with torch.no_grad():
        before = model(x)
        assert fold_batchnorm(model) == expected_folded
        torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)


class Residual(nn.Module):
    """conv's output goes to the BatchNorm and to the sum: not foldable."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


class SharedConv(nn.Module):
    """One conv called twice, once before the BatchNorm and once not: not foldable."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)

    def forward(self, x):
        return self.bn(self.conv(x)) + self.conv(x)


class ValueBranch(nn.Module):
    """A forward fx cannot trace (a branch on a value): its children are folded instead."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(8, 3, 1), nn.BatchNorm2d(3))
        self.calls = 0

    def forward(self, x):
        self.calls += 1  # state a trace must not touch
        y = self.a(x)
        if y.sum() > 0:
            y = y * 2
        return self.b(y)


def test_sequential_pairs_fold_and_modules_stay():
    model = _randomise(
        nn.Sequential(
            nn.Conv2d(3, 8, 3, bias=False),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 4, 1),
            nn.BatchNorm2d(4),
        )
    )
    conv = model[0]
    _check(model, 2)
    assert model[0] is conv and conv.bias is not None
    assert isinstance(model[1], nn.Identity) and isinstance(model[4], nn.Identity)


@pytest.mark.parametrize("cls", [Residual, SharedConv])
def test_a_conv_with_other_users_is_not_folded(cls):
    model = _randomise(cls())
    _check(model, 0)
    assert isinstance(model.bn, nn.BatchNorm2d)


def test_batchnorm_with_activation_is_not_folded():
    model = _randomise(nn.Sequential(nn.Conv2d(3, 4, 3), BatchNormAct2d(4)))
    _check(model, 0)


def test_untraceable_forward_folds_its_children_and_keeps_its_state():
    model = _randomise(ValueBranch())
    _check(model, 2)
    assert model.calls == 2  # the two checked forwards; the trace ran on a copy


def test_training_mode_is_refused():
    with pytest.raises(ValueError, match="eval"):
        fold_batchnorm(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))
