import pytest
import torch

from detforge.models import create_model, is_model, list_models
from detforge.models.fcos import FCOS
from detforge.models.yolox import YOLOX


def test_builtin_names_are_listed():
    names = list_models()
    for name in ("detforge_n", "detforge_s", "fcos_resnet18", "fcos_resnet50", "yolox_resnet18"):
        assert name in names
    assert is_model("fcos_resnet10t") and is_model("yolox_mobilenetv3_small_050")


def test_prefix_builds_any_timm_backbone():
    model = create_model("fcos_resnet10t", num_classes=4, fpn_channels=32, head_num_convs=1)
    assert isinstance(model, FCOS) and model.num_classes == 4 and model.strides == (8, 16, 32, 64, 128)
    yolox = create_model("yolox_mobilenetv3_small_050", num_classes=2, fpn_channels=16, head_width=16)
    assert isinstance(yolox, YOLOX) and yolox.strides == (8, 16, 32)
    out = yolox(torch.rand(2, 3, 64, 64))
    assert out["cls_logits"].shape[-1] == 2


@pytest.mark.parametrize(
    "name, backbone, params, quality",
    [
        ("detforge_n", "mobilenetv3_small_100", 1_268_972, True),
        ("detforge_s", "mobilenetv4_conv_small", 1_633_836, False),
    ],
)
def test_small_defaults_run_the_model_protocol(name, backbone, params, quality):
    """detforge_n (the default) and detforge_s (the earlier default, kept so its checkpoints load) keep their
    layers: parameter counts pinned."""
    model = create_model(name, num_classes=3)
    assert model.default_input_size == (256, 256) and model.strides == (8, 16, 32, 64)
    assert model.cls_quality == quality and model.features.body.pretrained_cfg["architecture"] == backbone
    assert sum(p.numel() for p in model.parameters()) == params
    images = torch.rand(2, 3, 128, 128)
    out = model(images)
    losses = model.loss(
        out, [{"boxes": torch.tensor([[8.0, 8.0, 60.0, 70.0]]), "labels": torch.tensor([2])}] * 2
    )
    losses["loss"].backward()
    detections = model.postprocess(out, [(128, 128)] * 2)
    assert len(detections) == 2 and set(detections[0]) == {"boxes", "scores", "labels"}


def test_unknown_backbone_and_local_weights(tmp_path):
    with pytest.raises(ValueError, match="unknown timm model 'not_a_net'"):
        create_model("fcos_not_a_net", num_classes=2)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        create_model("fcos_resnet10t", num_classes=2, pretrained=str(tmp_path / "missing.pth"))


def test_prefix_builders_take_backbone_kwargs():
    from detforge.models.backbone import FeatureBackboneConfig

    model = create_model(
        "yolox_resnet10t",
        num_classes=2,
        fpn_channels=16,
        head_width=16,
        backbone_kwargs={"drop_path_rate": 0.1},
    )
    assert model.init_args["backbone"] == FeatureBackboneConfig("resnet10t", drop_path_rate=0.1)
    assert any(getattr(m, "drop_prob", 0.0) > 0 for m in model.backbone.modules())  # reached timm
    with pytest.raises(ValueError, match="out_indices"):
        create_model("fcos_resnet10t", num_classes=2, backbone_kwargs={"out_indices": (2, 3, 4)})
