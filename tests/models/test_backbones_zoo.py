"""Any timm backbone: FCOS / YOLOX on CNNs (ResNet, EfficientNet, ConvNeXt), Swin (NHWC features) and plain
ViT / DeiT (single stride, simple feature pyramid) build, take a training step and export to ONNX.

These are big models on 2 CPU cores: the heads are kept light (32-channel FPN, one head conv), the training
step runs at 32 px (the smallest input every backbone takes: stride 32 on one 1x1 map, Swin's windows padded,
ViT on 2x2 patches); every backbone is exported to ONNX and checked in onnxruntime.
"""

import math

import pytest
import torch

from detforge.export import check_onnx, export_onnx
from detforge.models.backbone import build_backbone
from detforge.models.fcos import FCOS
from detforge.models.registry import create_model

LIGHT = dict(fpn_channels=32, head_num_convs=1)  # the backbones are what is tested
STEP_SIZE = 32

BACKBONES = [
    "resnet18",
    "convnext_tiny",
    "swin_tiny_patch4_window7_224",
    "deit_tiny_patch16_224",
    "efficientnet_b3",
    pytest.param("resnet50", marks=pytest.mark.slow),
    pytest.param("resnet101", marks=pytest.mark.slow),
    pytest.param("swin_small_patch4_window7_224", marks=pytest.mark.slow),
    pytest.param("swin_base_patch4_window7_224", marks=pytest.mark.slow),
    pytest.param("vit_base_patch16_224", marks=pytest.mark.slow),
]


def _targets(size: int) -> list[dict[str, torch.Tensor]]:
    s = float(size)
    return [
        {"boxes": torch.tensor([[0.1 * s, 0.1 * s, 0.7 * s, 0.8 * s]]), "labels": torch.tensor([1])},
        {
            "boxes": torch.tensor([[0.0, 0.2 * s, 0.5 * s, 0.6 * s], [0.4 * s, 0.4 * s, s, s]]),
            "labels": torch.tensor([0, 2]),
        },
    ]


def _train_step(model: torch.nn.Module, size: int) -> float:
    """One training step on a batch of 2 ``size`` px images; checks the gradients, returns the loss."""
    model.train()
    out = model(torch.rand(2, 3, size, size))
    losses = model.loss(out, _targets(size))
    losses["loss"].backward()
    body = model.features.body
    grads = [p.grad for p in body.parameters() if p.grad is not None]
    assert grads, "no gradient reached the backbone"
    assert all(bool(torch.isfinite(g).all()) for g in grads)
    assert any(bool(g.abs().sum() > 0) for g in grads)
    head_grads = [p.grad for p in model.head.parameters() if p.grad is not None]
    assert head_grads and all(bool(torch.isfinite(g).all()) for g in head_grads)
    return float(losses["loss"])


@pytest.mark.parametrize("name", BACKBONES)
def test_fcos_on_timm_backbone_builds_and_trains(name):
    model = create_model("fcos_" + name, num_classes=3, **LIGHT)
    # The last three feature levels (or ViT's simple pyramid from its stride-16 map) plus P6, P7.
    assert model.strides == (8, 16, 32, 64, 128)
    assert (model.features.simple is not None) == name.startswith(("vit_", "deit_"))
    assert model.features.channels_last_features == name.startswith("swin_")
    assert math.isfinite(_train_step(model, STEP_SIZE))


@pytest.mark.parametrize("name", ["resnet18", "deit_tiny_patch16_224"])
def test_yolox_on_timm_backbone_builds_and_trains(name):
    model = create_model("yolox_" + name, num_classes=3, **LIGHT)
    assert model.strides == (8, 16, 32)
    assert math.isfinite(_train_step(model, STEP_SIZE))


@pytest.mark.parametrize(
    ("name", "size"),
    [
        ("resnet18", 64),
        ("convnext_tiny", 64),
        pytest.param("swin_tiny_patch4_window7_224", 64, marks=pytest.mark.slow),
        ("deit_tiny_patch16_224", 224),  # a dynamic-size ViT exports at its position-embedding grid (224)
        pytest.param("resnet50", 64, marks=pytest.mark.slow),
        pytest.param("resnet101", 64, marks=pytest.mark.slow),
        pytest.param("efficientnet_b3", 64, marks=pytest.mark.slow),
        pytest.param("swin_small_patch4_window7_224", 64, marks=pytest.mark.slow),
        pytest.param("swin_base_patch4_window7_224", 64, marks=pytest.mark.slow),
        pytest.param("vit_base_patch16_224", 224, marks=pytest.mark.slow),
    ],
)
def test_onnx_export_matches_pytorch(name, size, tmp_path):
    model = create_model("fcos_" + name, num_classes=3, input_size=(size, size), **LIGHT).eval()
    example = torch.rand(1, 3, size, size)
    path = export_onnx(model, tmp_path / f"{name}.onnx", example_input=example)
    assert check_onnx(model, path, example) < 1e-4


def test_vit_built_for_the_input_size_exports_there(tmp_path):
    # build_backbone(input_size=...) puts the ViT's position-embedding grid at that size: no resampling in
    # the graph (antialiased bicubic, which ONNX opset 17 lacks), and it still trains at other sizes.
    body = build_backbone("deit_tiny_patch16_224", input_size=(64, 96))
    model = FCOS(body, num_classes=3, input_size=(64, 96), **LIGHT).eval()
    example = torch.rand(1, 3, 64, 96)
    path = export_onnx(model, tmp_path / "deit.onnx", example_input=example)
    assert check_onnx(model, path, example) < 1e-4
    assert math.isfinite(_train_step(model, 32))
