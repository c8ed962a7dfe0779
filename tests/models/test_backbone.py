import pytest
import timm
import torch

from detforge.models.backbone import (
    FeatureBackboneConfig,
    PretrainedWeightsError,
    PyramidBackbone,
    build_backbone,
    fixed_input_size,
    freeze_backbone,
    freeze_stages,
)
from detforge.models.registry import create_model

# Small versions of the transformer families (timm passes these to the model's constructor).
TINY_SWIN = dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1))  # stage channels 16, 32, 64, 128
TINY_VIT = dict(embed_dim=32, depth=3, num_heads=2)


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


def _fpn_inputs(pyramid: PyramidBackbone) -> dict:
    seen: dict = {}
    pyramid.fpn.register_forward_pre_hook(lambda m, args: seen.setdefault("x", list(args[0])))
    return seen


def test_default_out_indices_are_the_last_three_levels():
    # ConvNeXt has 4 feature levels (strides 4-32): the earlier fixed (2, 3, 4) raised an IndexError.
    full = timm.create_model("convnext_atto", features_only=True).feature_info
    backbone = build_backbone("convnext_atto")
    assert backbone.feature_info.reduction() == full.reduction()[-3:] == [8, 16, 32]
    assert backbone.feature_info.channels() == full.channels()[-3:]
    feats = backbone(torch.rand(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == full.channels()[-3:]
    explicit = build_backbone(FeatureBackboneConfig("convnext_atto", out_indices=(1, 2)))
    assert explicit.feature_info.reduction() == [8, 16]


@pytest.mark.parametrize("name", ["resnet18", "mobilenetv3_small_100", "mobilenetv4_conv_small"])
def test_default_is_the_earlier_2_3_4_on_five_level_cnns(name):
    default = build_backbone(name).eval()
    explicit = build_backbone(FeatureBackboneConfig(name, out_indices=(2, 3, 4))).eval()
    assert default.feature_info.reduction() == explicit.feature_info.reduction() == [8, 16, 32]
    assert default.feature_info.channels() == explicit.feature_info.channels()
    assert {k: v.shape for k, v in default.state_dict().items()} == {
        k: v.shape for k, v in explicit.state_dict().items()
    }
    explicit.load_state_dict(default.state_dict())
    x = torch.rand(1, 3, 64, 64)
    for ours, theirs in zip(default(x), explicit(x)):
        torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("name", ["detforge_n", "detforge_s"])
def test_default_models_keep_their_checkpoint_layout(name):
    new = create_model(name).state_dict()
    old = create_model(name, out_indices=(2, 3, 4)).state_dict()  # the default before out_indices=None
    assert {k: v.shape for k, v in new.items()} == {k: v.shape for k, v in old.items()}


def test_nhwc_features_are_permuted_for_the_fpn():
    pyramid = PyramidBackbone(
        FeatureBackboneConfig("swin_tiny_patch4_window7_224", extra_kwargs=TINY_SWIN), 16, extra_levels=1
    ).eval()
    assert pyramid.channels_last_features
    assert pyramid.strides == (8, 16, 32, 64)
    assert fixed_input_size(pyramid.body) is None  # built with dynamic_img_size: any size
    x = torch.rand(2, 3, 64, 96)
    raw = pyramid.body((x - pyramid.pixel_mean) / pyramid.pixel_std)
    assert tuple(raw[0].shape) == (2, 8, 12, 32)  # Swin gives [B, H, W, C]
    seen = _fpn_inputs(pyramid)
    out = pyramid(x)
    assert [tuple(f.shape) for f in seen["x"]] == [(2, 32, 8, 12), (2, 64, 4, 6), (2, 128, 2, 3)]
    torch.testing.assert_close(seen["x"][0], raw[0].permute(0, 3, 1, 2))
    assert [tuple(f.shape) for f in out] == [(2, 16, 8, 12), (2, 16, 4, 6), (2, 16, 2, 3), (2, 16, 1, 2)]


def test_single_stride_vit_gets_a_simple_pyramid_from_its_last_map():
    pyramid = PyramidBackbone(
        FeatureBackboneConfig("vit_tiny_patch16_224", extra_kwargs=TINY_VIT), 16, extra_levels=2
    ).eval()
    assert pyramid.body.feature_info.reduction() == [16, 16, 16]
    assert pyramid.simple is not None and pyramid.simple.strides == (8, 16, 32)
    assert pyramid.strides == (8, 16, 32, 64, 128)
    x = torch.rand(2, 3, 64, 96)  # not the timm config's 224: built with dynamic_img_size
    last = pyramid.body((x - pyramid.pixel_mean) / pyramid.pixel_std)[-1]
    seen = _fpn_inputs(pyramid)
    out = pyramid(x)
    torch.testing.assert_close(seen["x"][1], last)  # stride 16: the ViT's last map itself
    assert [tuple(f.shape) for f in seen["x"]] == [(2, 16, 8, 12), (2, 32, 4, 6), (2, 32, 2, 3)]
    assert [tuple(f.shape[-2:]) for f in out] == [(8, 12), (4, 6), (2, 3), (1, 2), (1, 1)]
    assert PyramidBackbone("resnet10t", 16).simple is None


def test_input_size_sets_the_vit_position_grid_and_other_sizes_still_run():
    body = build_backbone(
        FeatureBackboneConfig("vit_tiny_patch16_224", extra_kwargs=TINY_VIT), input_size=(64, 96)
    )
    assert tuple(body.model.pos_embed.shape) == (1, 1 + 4 * 6, 32)  # class token + the 4 x 6 patch grid
    assert fixed_input_size(body) is None
    assert tuple(body(torch.rand(1, 3, 32, 32))[-1].shape) == (1, 32, 2, 2)


def test_fixed_size_backbone_names_the_size_in_its_error():
    cfg = FeatureBackboneConfig("vit_tiny_patch16_224", extra_kwargs=dict(TINY_VIT, img_size=64))
    pyramid = PyramidBackbone(cfg, 16, extra_levels=0)
    assert fixed_input_size(pyramid.body) == (64, 64)
    assert len(pyramid(torch.rand(1, 3, 64, 64))) == 3
    with pytest.raises(
        ValueError, match=r"'vit_tiny_patch16_224' has a fixed input size .*96x96.*\(96, 96\)"
    ):
        pyramid(torch.rand(1, 3, 96, 96))


def test_options_a_model_does_not_take_are_left_out():
    # MLP-Mixer has a fixed-size timm config but no dynamic_img_size option: it is built at its 224.
    mixer = build_backbone(FeatureBackboneConfig("mixer_s16_224", extra_kwargs=dict(mlp_ratio=(0.5, 0.5))))
    assert fixed_input_size(mixer) == (224, 224)
    # EfficientViT (MSRA) takes no drop_path_rate: left out at its default 0, passed on (and rejected) if set.
    assert build_backbone("efficientvit_m0").feature_info.reduction() == [16, 32, 64]
    with pytest.raises(TypeError, match="drop_path_rate"):
        build_backbone(FeatureBackboneConfig("efficientvit_m0", drop_path_rate=0.1))


@pytest.mark.parametrize(
    "name, kwargs",
    [("resnet10t", {}), ("mobilenetv2_100", {}), ("swin_tiny_patch4_window7_224", TINY_SWIN)],
)
def test_freeze_stages_freezes_what_runs_before_the_first_stride_8_output(name, kwargs):
    """The reference: the parameterised modules that run before the first one whose output is at stride 8,
    found by running the body with hooks (NCHW and Swin's NHWC outputs); of those, only the ones inside that
    module's own block (MobileNetV2's expansion conv runs at stride 4 in the stride-8 block) may train."""
    body = build_backbone(FeatureBackboneConfig(name, extra_kwargs=kwargs))
    size = 64
    first_coarse = None
    order = []
    hooks = []
    for module_name, module in body.named_modules():
        if next(module.parameters(recurse=False), None) is None:
            continue

        def hook(mod, inputs, output, module_name=module_name):
            out = output[0] if isinstance(output, list | tuple) else output
            order.append((module_name, tuple(out.shape)))

        hooks.append(module.register_forward_hook(hook))
    body.eval()
    with torch.no_grad():
        body(torch.rand(1, 3, size, size))
    for h in hooks:
        h.remove()
    for index, (_, shape) in enumerate(order):
        spatial = [d for d in shape[1:] if d in (size // 8, size // 16, size // 32)]
        if len(shape) == 4 and len(spatial) >= 2 and size // 4 not in shape[1:]:
            first_coarse = index
            break
    expected = {module_name for module_name, _ in order[:first_coarse]}
    frozen_names = freeze_stages(body, 4)
    assert frozen_names
    frozen = {n.rsplit(".", 1)[0] for n, p in body.named_parameters() if not p.requires_grad}
    trainable = {n.rsplit(".", 1)[0] for n, p in body.named_parameters() if p.requires_grad}
    block = order[first_coarse][0].rsplit(".", 1)[0] + "."
    assert frozen <= expected, frozen - expected
    assert all(n.startswith(block) for n in trainable & expected), trainable & expected
    assert order[0][0] in frozen  # the stem
    body.train()
    outputs = body(torch.rand(2, 3, size, size))
    sum(o.float().mean() for o in outputs).backward()
    assert all(p.grad is None for p in body.parameters() if not p.requires_grad)
    assert all(p.grad is not None for p in body.parameters() if p.requires_grad)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for n, m in body.named_modules() if n in frozen)


def test_freeze_stages_errors_name_the_option():
    with pytest.raises(ValueError, match="freeze_backbone_stride=1: the backbone's first stage has stride 2"):
        freeze_stages(build_backbone("resnet10t"), 1)
    with pytest.raises(ValueError, match="freeze_backbone_stride: .* no timm feature_info"):
        freeze_stages(torch.nn.Conv2d(3, 3, 1), 4)
