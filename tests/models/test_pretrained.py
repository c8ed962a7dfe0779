"""torchvision ImageNet checkpoints loaded into timm backbones (detforge.models.pretrained), no network:
torchvision models with random weights are saved and loaded back through ``pretrained=PATH``."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from torch import nn

from detforge.models.backbone import FeatureBackboneConfig, build_backbone
from detforge.models.pretrained import (
    WeightMappingError,
    detect_layout,
    load_state_dict_file,
    torchvision_to_timm,
)


def _randomise_bn(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics, so a BN mapped to the wrong place changes the features."""
    gen = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=gen) * 0.1)
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=gen) + 0.5)
            module.weight.data.copy_(torch.rand(module.weight.shape, generator=gen) + 0.5)
            module.bias.data.copy_(torch.randn(module.bias.shape, generator=gen) * 0.1)
    return model.eval()


def _save(model: nn.Module, tmp_path, name: str) -> str:
    path = tmp_path / name
    torch.save(model.state_dict(), path)
    return str(path)


def _resnet_features(model, x: torch.Tensor) -> list[torch.Tensor]:
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    x = model.layer1(x)
    c3 = model.layer2(x)
    c4 = model.layer3(c3)
    return [c3, c4, model.layer4(c4)]


@torch.no_grad()
def test_resnet18_features_equal_torchvision(tmp_path):
    torch.manual_seed(0)
    tv = _randomise_bn(torchvision.models.resnet18(weights=None))
    path = _save(tv, tmp_path, "resnet18-f37072fd.pth")
    body = build_backbone(FeatureBackboneConfig("resnet18", pretrained=path)).eval()
    x = torch.rand(1, 3, 64, 96)
    for ours, ref in zip(body(x), _resnet_features(tv, x), strict=True):
        torch.testing.assert_close(ours, ref)


@torch.no_grad()
def test_mobilenet_v2_features_equal_torchvision(tmp_path):
    torch.manual_seed(0)
    tv = _randomise_bn(torchvision.models.mobilenet_v2(weights=None))
    path = _save(tv, tmp_path, "mobilenet_v2-b0353104.pth")
    assert detect_layout(load_state_dict_file(path)) == "torchvision_mobilenet_v2"
    body = build_backbone(FeatureBackboneConfig("mobilenetv2_100", pretrained=path)).eval()
    x = torch.rand(1, 3, 64, 96)
    # torchvision's stride 8 / 16 / 32 stage ends: after features.6, features.13, features.17
    refs, out = [], x
    for i, layer in enumerate(tv.features[:18]):
        out = layer(out)
        if i in (6, 13, 17):
            refs.append(out)
    for ours, ref in zip(body(x), refs, strict=True):
        torch.testing.assert_close(ours, ref)


def test_mobilenet_v2_mapping_covers_timm_full_model():
    """Every tensor of timm's full mobilenetv2_100 gets exactly one torchvision tensor of the same shape."""
    tv = torchvision.models.mobilenet_v2(weights=None).state_dict()
    mapped = torchvision_to_timm(tv, "torchvision_mobilenet_v2", "mobilenetv2_100")
    full = timm.create_model("mobilenetv2_100", pretrained=False).state_dict()
    assert set(mapped) == set(full)
    assert all(mapped[k].shape == full[k].shape for k in full)


def test_resnet50_mapping_covers_timm_full_model():
    """The ResNet-50 names and shapes (bottlenecks, downsample) match timm's full resnet50 one to one."""
    with torch.device("meta"):
        tv = torchvision.models.resnet50(weights=None).state_dict()
        full = timm.create_model("resnet50", pretrained=False).state_dict()
    assert detect_layout(tv) == "torchvision_resnet"
    mapped = torchvision_to_timm(tv, "torchvision_resnet", "resnet50")
    assert set(mapped) == set(full)
    assert all(mapped[k].shape == full[k].shape for k in full)


def test_resnet50_loads_through_build_backbone(tmp_path):
    torch.manual_seed(0)
    tv = torchvision.models.resnet50(weights=None)
    path = _save(tv, tmp_path, "resnet50-0676ba61.pth")
    body = build_backbone(FeatureBackboneConfig("resnet50", pretrained=path))
    state = body.state_dict()
    for name in ("conv1.weight", "layer3.5.bn3.running_var", "layer4.0.downsample.0.weight"):
        torch.testing.assert_close(state[name], tv.state_dict()[name])


def test_in_chans_1_adapts_the_stem(tmp_path):
    tv = torchvision.models.resnet18(weights=None)
    path = _save(tv, tmp_path, "resnet18.pth")
    body = build_backbone(FeatureBackboneConfig("resnet18", pretrained=path), in_chans=1)
    expected = tv.conv1.weight.detach().sum(dim=1, keepdim=True)
    torch.testing.assert_close(body.state_dict()["conv1.weight"], expected)


def test_wrong_architecture_names_the_first_mismatching_tensor(tmp_path):
    path = _save(torchvision.models.resnet18(weights=None), tmp_path, "resnet18.pth")
    with pytest.raises(WeightMappingError, match=r"'layer1\.0\.conv1\.weight' has shape \(64, 64, 3, 3\)"):
        build_backbone(FeatureBackboneConfig("resnet50", pretrained=path))


def test_wrong_family_is_named(tmp_path):
    path = _save(torchvision.models.mobilenet_v2(weights=None), tmp_path, "mnv2.pth")
    with pytest.raises(WeightMappingError, match=r"torchvision_mobilenet_v2.*mobilenetv2_.*'resnet18'"):
        build_backbone(FeatureBackboneConfig("resnet18", pretrained=path))


def test_wrong_width_is_named(tmp_path):
    path = _save(torchvision.models.mobilenet_v2(weights=None), tmp_path, "mnv2.pth")
    with pytest.raises(WeightMappingError, match=r"'conv_stem\.weight' has shape \(32, 3, 3, 3\)"):
        build_backbone(FeatureBackboneConfig("mobilenetv2_140", pretrained=path))


def test_unknown_layout_falls_back_to_timm_and_fails_clearly(tmp_path):
    path = tmp_path / "odd.pth"
    torch.save({"encoder.weight": torch.zeros(3, 3)}, path)
    assert detect_layout(load_state_dict_file(path)) == "other"
    with pytest.raises(
        WeightMappingError, match=r"unknown weight layout.*'conv1\.weight'.*'encoder\.weight'"
    ):
        build_backbone(FeatureBackboneConfig("resnet18", pretrained=str(path)))
