import pytest
import timm
import torch

from detforge.models.backbone import (
    FeatureBackboneConfig,
    PretrainedWeightsError,
    PyramidBackbone,
    build_backbone,
    freeze_backbone,
)


def test_build_backbone_feature_info_matches_outputs():
    backbone = build_backbone("resnet10t")
    feats = backbone(torch.rand(2, 3, 64, 96))
    assert backbone.feature_info.reduction() == [8, 16, 32]
    assert [f.shape[1] for f in feats] == backbone.feature_info.channels()
    assert [tuple(f.shape[-2:]) for f in feats] == [(64 // s, 96 // s) for s in (8, 16, 32)]


def test_config_options_and_grayscale():
    cfg = FeatureBackboneConfig("mobilenetv3_small_050", out_indices=(1, 2, 3, 4), drop_path_rate=0.1)
    backbone = build_backbone(cfg, in_chans=1)
    assert backbone.feature_info.reduction() == [4, 8, 16, 32]
    assert len(backbone(torch.rand(1, 1, 64, 64))) == 4


def test_unknown_name_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown timm model 'resnet_nope'"):
        build_backbone("resnet_nope")


def test_pretrained_from_local_file_loads_those_weights(tmp_path):
    reference = timm.create_model("resnet10t", pretrained=False)
    path = tmp_path / "resnet10t.pth"
    torch.save(reference.state_dict(), path)
    backbone = build_backbone(FeatureBackboneConfig("resnet10t", pretrained=str(path)))
    torch.testing.assert_close(backbone.layer4[0].conv1.weight, reference.layer4[0].conv1.weight)
    fresh = build_backbone("resnet10t")
    assert not torch.equal(fresh.layer4[0].conv1.weight, reference.layer4[0].conv1.weight)


def test_missing_local_file_names_the_path(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        build_backbone(FeatureBackboneConfig("resnet10t", pretrained=str(missing)))


def test_offline_hub_failure_names_the_local_file_option(monkeypatch):
    def offline(*args, pretrained=False, **kwargs):
        if pretrained:
            raise OSError("We couldn't connect to 'https://huggingface.co'")
        return timm.create_model(*args, **kwargs)

    monkeypatch.setattr("detforge.models.backbone.timm.create_model", offline)
    with pytest.raises(PretrainedWeightsError, match=r"pretrained='PATH'") as info:
        build_backbone(FeatureBackboneConfig("resnet10t", pretrained=True))
    assert "resnet10t" in str(info.value)


def test_freeze_backbone_stops_grads_and_running_stats():
    backbone = freeze_backbone(build_backbone("resnet10t"))
    assert not any(p.requires_grad for p in backbone.parameters())
    backbone.train()
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    backbone(torch.rand(2, 3, 64, 64))
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in backbone.modules())


def test_pyramid_backbone_normalises_and_checks_channels():
    pyramid = PyramidBackbone("resnet10t", fpn_channels=32, extra_levels=2)
    assert pyramid.strides == (8, 16, 32, 64, 128)
    feats = pyramid(torch.rand(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == [32] * 5
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        pyramid(torch.rand(1, 1, 64, 64))
    gray = PyramidBackbone("resnet10t", fpn_channels=32, extra_levels=0, in_chans=1)
    assert gray.pixel_mean.shape == (1, 1, 1, 1)
    # Normalisation happens inside: an image equal to the mean becomes zeros for the backbone.
    seen = {}
    gray.body.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))
    gray(torch.full((2, 1, 32, 32), float(gray.pixel_mean)))
    assert seen["x"].abs().max() < 1e-6
