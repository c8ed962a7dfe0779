"""The fused frozen BatchNorm against the torchvision / timm layers it replaces: same values and gradients in
float32, the input's dtype kept under bfloat16, same state dict, timm's ``unfreeze`` still undoes it, and every
freezing path of detforge gives it."""

from __future__ import annotations

import pytest
import timm
import torch
from timm.layers import BatchNormAct2d, FrozenBatchNormAct2d
from timm.utils.model import freeze_batch_norm_2d, unfreeze
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from detforge.models.backbone import freeze_backbone, freeze_stages
from detforge.models.frozen_norm import (
    FusedFrozenBatchNorm2d,
    FusedFrozenBatchNormAct2d,
    fuse_frozen_batchnorm,
)


def _frozen_pair(act: bool, channels: int = 8):
    """A frozen BatchNorm (timm's conversion of a BatchNorm with random statistics) and its fused copy."""
    torch.manual_seed(0)
    bn = BatchNormAct2d(channels, act_layer=nn.ReLU6) if act else nn.BatchNorm2d(channels)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.normal_()
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.1, 3.0)
    plain = freeze_batch_norm_2d(bn)
    fused = freeze_batch_norm_2d(bn)
    assert fuse_frozen_batchnorm(fused) == 1
    return plain, fused


@pytest.mark.parametrize("act", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_same_values_and_gradients_as_the_layer_it_replaces(act, channels_last):
    plain, fused = _frozen_pair(act)
    assert type(fused) is (FusedFrozenBatchNormAct2d if act else FusedFrozenBatchNorm2d)
    assert isinstance(fused, FrozenBatchNormAct2d if act else FrozenBatchNorm2d)
    x = torch.randn(2, 8, 5, 7)  # [B, C, H, W]
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = plain(x1), fused(x2)
    torch.testing.assert_close(y2, y1, rtol=1e-6, atol=1e-6)
    assert y2.is_contiguous(memory_format=torch.channels_last) == channels_last
    grad = torch.randn_like(y1)
    y1.backward(grad)
    y2.backward(grad)
    torch.testing.assert_close(x2.grad, x1.grad, rtol=1e-6, atol=1e-6)
    assert plain.state_dict().keys() == fused.state_dict().keys()


@pytest.mark.parametrize("act", [False, True])
def test_bfloat16_input_stays_bfloat16(act):
    """The layer it replaces returns float32 for a bfloat16 input (its float32 buffers promote it)."""
    plain, fused = _frozen_pair(act)
    x = torch.randn(2, 8, 5, 7).bfloat16()
    assert plain(x).dtype == torch.float32
    out = fused(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), plain(x), rtol=2e-2, atol=2e-2)


def test_unfreeze_turns_it_back_into_training_batchnorm():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), BatchNormAct2d(8))
    freeze_backbone(model)
    assert [type(m) for m in model[1:]] == [FusedFrozenBatchNorm2d, FusedFrozenBatchNormAct2d]
    unfreeze(model)
    assert [type(m) for m in model[1:]] == [nn.BatchNorm2d, BatchNormAct2d]
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("name", ["resnet18", "mobilenetv2_100"])
def test_every_freezing_path_gives_the_fused_layer(name):
    body = timm.create_model(name, pretrained=False, features_only=True, out_indices=(1, 2, 3, 4))
    freeze_stages(body, 4)
    frozen = [m for m in body.modules() if isinstance(m, FrozenBatchNorm2d | FrozenBatchNormAct2d)]
    assert frozen and all(type(m) in (FusedFrozenBatchNorm2d, FusedFrozenBatchNormAct2d) for m in frozen)
