"""``detforge.models.build.build_model``: ObjectDetector's model options -> a built Detector."""

from __future__ import annotations

import pytest

from detforge.models.backbone import FeatureBackboneConfig
from detforge.models.build import build_model, check_detection_arch


def test_autotimm_form_forwards_backbone_options_input_size_and_strides():
    model = build_model(
        None,
        backbone=FeatureBackboneConfig("resnet10t", drop_rate=0.1, extra_kwargs={"drop_block_rate": 0.0}),
        detection_arch="yolox",
        options={"fpn_channels": 16, "soft_nms_sigma": 0.3},
        model_kwargs={"head_width": 16},
        num_classes=2,
        imgsz=96,
        strides=(8, 16, 32, 64),
    )
    assert model.init_args["backbone"].drop_rate == 0.1
    assert model.init_args["backbone"].extra_kwargs == {"drop_block_rate": 0.0}
    assert model.default_input_size == (96, 96) and model.strides == (8, 16, 32, 64)
    assert model.init_args["soft_nms_sigma"] == 0.3 and model.soft_nms_sigma == 0.3


def test_options_a_builder_does_not_take_raise_naming_them():
    with pytest.raises(
        ValueError, match=r"'nexus' does not take fpn_channels=8 \(an ObjectDetector option\)"
    ):
        build_model("nexus", options={"fpn_channels": 8})
    with pytest.raises(ValueError, match=r"does not take bogus=1 \(an model_kwargs entry\)"):
        build_model("nexus", model_kwargs={"bogus": 1})


def test_detection_arch_is_checked():
    check_detection_arch(None)
    with pytest.raises(ValueError, match=r"\('fcos', 'yolox'\).*'retina'"):
        check_detection_arch("retina")
    with pytest.raises(ValueError, match="detection_arch"):
        build_model(None, backbone="resnet10t", detection_arch="retina")
