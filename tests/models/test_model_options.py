"""No silently dropped model options: each ObjectDetector model option, set on every registered model, either
arrives (``model.init_args[name] == value``; post-processing settings also as ``model.<name>``) or raises a
ValueError naming the option and the model. Models are built on the meta device (no weights, no compile)."""

from __future__ import annotations

import functools
import warnings

import pytest
import torch

from detforge.models.detector import MODEL_OPTIONS, ObjectDetector
from detforge.models.registry import list_models

POSTPROCESS = {
    "score_thresh": 0.2,
    "nms_thresh": 0.45,
    "pre_nms_topk": 77,
    "max_detections_per_image": 33,
    "nms_method": "linear",
    "soft_nms_sigma": 0.3,
}
OPTIONS = {
    "fpn_channels": 24,
    "head_num_convs": 1,
    "focal_alpha": 0.3,
    "focal_gamma": 1.5,
    "cls_loss_fn": "focal",
    "reg_loss_fn": "diou",
    "cls_loss_weight": 2.0,
    "reg_loss_weight": 3.0,
    "centerness_loss_weight": 0.5,
    "regress_ranges": None,  # per model: one range per pyramid level
    "strides": None,  # per model: one level more than its own
    "anchors": "auto",
    **POSTPROCESS,
}


def test_the_options_tested_are_all_the_model_options():
    assert set(OPTIONS) == {*MODEL_OPTIONS, "strides"}


def build(name: str, **options) -> ObjectDetector:
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        return ObjectDetector(model=name, compile_model=False, deterministic=False, **options)


@functools.cache
def default_strides(name: str) -> tuple[int, ...] | None:
    strides = getattr(build(name).model, "strides", None)
    return None if strides is None else tuple(strides)


def value_for(option: str, name: str):
    strides = default_strides(name) or (8, 16, 32)
    if option == "regress_ranges":
        bounds = [-1.0] + [4.0 * s for s in strides[:-1]] + [float("inf")]
        return tuple(zip(bounds[:-1], bounds[1:], strict=True))
    if option == "strides":
        return (*strides, 2 * strides[-1])
    return OPTIONS[option]


@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("name", list_models())
def test_every_option_arrives_or_raises_naming_it(name, option):
    value = value_for(option, name)
    try:
        model = build(name, **{option: value}).model
    except ValueError as err:
        assert option in str(err) and repr(name) in str(err), str(err)
        return
    if not hasattr(model, "init_args"):  # only until every model is a Detector
        pytest.skip(f"{name} is not a Detector yet (no init_args)")
    if option == "strides":
        assert tuple(model.strides) == value
    elif option in POSTPROCESS:
        assert getattr(model, option) == value
        assert model.init_args[option] == value  # every builder takes every post-processing setting
    else:
        assert model.init_args[option] == value
