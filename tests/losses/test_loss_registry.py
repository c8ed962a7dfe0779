import pytest
from torch import nn

from detforge.losses import CIoULoss, FocalLoss, SmoothL1Loss
from detforge.losses.registry import _LOSSES, get_loss, list_losses, register_loss

BUILTIN = {"focal", "bce", "iou", "giou", "diou", "ciou", "l1", "smooth_l1", "uncertainty", "quality_focal"}


def test_builtins_registered_and_buildable():
    assert BUILTIN.issubset(list_losses())
    assert list_losses() == sorted(list_losses())
    for name in BUILTIN:
        assert isinstance(get_loss(name), nn.Module), name


def test_kwargs_reach_the_loss():
    focal = get_loss("focal", alpha=0.5, gamma=1.0)
    assert isinstance(focal, FocalLoss) and (focal.alpha, focal.gamma) == (0.5, 1.0)
    assert isinstance(get_loss("ciou", box_format="ltrb"), CIoULoss)
    assert get_loss("smooth_l1", beta=0.1).beta == 0.1
    assert isinstance(get_loss("smooth_l1"), SmoothL1Loss)


def test_unknown_name_lists_registered():
    with pytest.raises(ValueError, match="unknown loss 'focall'.*focal"):
        get_loss("focall")


def test_register_and_duplicate():
    try:

        @register_loss("test_only_loss")
        class MyLoss(nn.L1Loss):
            pass

        assert isinstance(get_loss("test_only_loss"), MyLoss)
        assert "test_only_loss" in list_losses()
        with pytest.raises(ValueError, match="already registered"):
            register_loss("test_only_loss")(MyLoss)
        with pytest.raises(ValueError, match="already registered"):
            register_loss("focal")(MyLoss)
    finally:
        _LOSSES.pop("test_only_loss", None)
