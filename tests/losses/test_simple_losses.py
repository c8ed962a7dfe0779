import pytest
import torch
from torch import nn

from detforge.losses import BCEWithLogitsLoss, L1Loss, SmoothL1Loss


@pytest.mark.parametrize(
    "ours,twin",
    [
        (BCEWithLogitsLoss, nn.BCEWithLogitsLoss),
        (L1Loss, nn.L1Loss),
        (SmoothL1Loss, nn.SmoothL1Loss),
        (lambda **kw: SmoothL1Loss.with_beta(0.1, **kw), lambda **kw: nn.SmoothL1Loss(beta=0.1, **kw)),
    ],
)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_equal_torch(ours, twin, reduction):
    pred, target = torch.randn(6, 4), torch.rand(6, 4)
    loss = ours(reduction=reduction)
    assert isinstance(loss, nn.Module)
    assert torch.allclose(loss.compute(pred, target), twin(reduction=reduction)(pred, target))


def test_subclass_torch_and_keep_beta():
    loss = SmoothL1Loss.with_beta(0.1)
    assert isinstance(loss, nn.SmoothL1Loss) and loss.beta == 0.1
    assert isinstance(BCEWithLogitsLoss(), nn.BCEWithLogitsLoss)


def test_smooth_l1_formula():
    pred = torch.tensor([0.0, 0.05, 0.3, -2.0])
    beta = 0.1
    want = [0.0, 0.5 * 0.05**2 / beta, 0.3 - 0.5 * beta, 2.0 - 0.5 * beta]
    got = SmoothL1Loss.with_beta(beta, reduction="none")(pred, torch.zeros(4))
    assert torch.allclose(got, torch.tensor(want))


def test_pos_weight_and_row_weight():
    pred, target = torch.randn(5, 3), (torch.rand(5, 3) > 0.5).float()
    pw = torch.tensor([1.0, 2.0, 3.0])
    assert torch.allclose(
        BCEWithLogitsLoss(pos_weight=pw)(pred, target), nn.BCEWithLogitsLoss(pos_weight=pw)(pred, target)
    )
    w = torch.tensor([1.0, 0.0, 0.0, 2.0, 1.0])
    per = L1Loss(reduction="none")(pred, target)
    assert torch.allclose(L1Loss()(pred, target, w), (per * w[:, None]).sum() / (w.sum() * 3))


@pytest.mark.parametrize("cls", [BCEWithLogitsLoss, L1Loss, SmoothL1Loss])
def test_empty_gives_connected_zero(cls):
    pred = torch.zeros(0, 4, requires_grad=True)
    loss = cls()(pred, torch.zeros(0, 4))
    assert loss.item() == 0.0 and loss.grad_fn is not None
    loss.backward()


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="'none', 'mean', 'sum'"):
        L1Loss(reduction="elementwise_mean")
    with pytest.raises(ValueError, match="beta"):
        SmoothL1Loss(beta=-1)
    with pytest.raises(ValueError, match="SmoothL1Loss"):
        SmoothL1Loss()(torch.zeros(2, 4), torch.zeros(4, 2))
