import pytest
import torch

from detforge.models import create_model, list_models
from detforge.models.edge import Nexus, NightVision, Phantom
from detforge.models.edge.common import count_parameters

# Parameter budgets of the issue: Nexus ~430K, Phantom ~126K, NightVision 200K-500K (edge the smallest).
PARAMETER_RANGES = {
    "nexus": (400_000, 460_000),
    "phantom": (115_000, 135_000),
    "nightvision_edge": (200_000, 240_000),
    "nightvision_wildlife": (240_000, 500_000),
    "nightvision_human": (240_000, 500_000),
    "nightvision_vehicle": (240_000, 500_000),
    "nightvision_multi_domain": (240_000, 500_000),
}


def test_all_edge_models_registered():
    assert set(PARAMETER_RANGES) <= set(list_models())


@pytest.mark.parametrize("name", sorted(PARAMETER_RANGES))
def test_parameter_count_in_budget(name):
    lo, hi = PARAMETER_RANGES[name]
    n = count_parameters(create_model(name))
    assert lo <= n <= hi, f"{name}: {n} parameters, budget [{lo}, {hi}]"


def test_edge_is_smallest_nightvision():
    sizes = {n: count_parameters(create_model(n)) for n in PARAMETER_RANGES if n.startswith("nightvision")}
    assert min(sizes, key=sizes.get) == "nightvision_edge"


@pytest.mark.parametrize(
    ("name", "cls", "in_chans"),
    [("nexus", Nexus, 3), ("phantom", Phantom, 3), ("nightvision_edge", NightVision, 1)],
)
def test_protocol_attributes(name, cls, in_chans):
    model = create_model(name)
    assert isinstance(model, cls)
    assert model.in_chans == in_chans
    assert isinstance(model.num_classes, int)
    assert len(model.default_input_size) == 2


def test_builders_take_num_classes_and_in_chans():
    assert create_model("nexus", num_classes=3, in_chans=1).num_classes == 3
    assert create_model("nightvision_wildlife", num_classes=7, in_chans=3).in_chans == 3
    with pytest.raises(ValueError, match="one class"):
        create_model("phantom", num_classes=2)


def test_outputs_identical_in_train_and_eval_mode_structure():
    model = create_model("nightvision_edge")
    x = torch.rand(1, 1, 64, 64)
    model.train()
    train_keys = set(model(x))
    model.eval()
    assert set(model(x)) == train_keys


@pytest.mark.parametrize("name", ["nexus", "phantom", "nightvision_edge"])
def test_builders_take_the_shared_postprocess_settings(name):
    """The library's one name per setting reaches every edge model (``ObjectDetector`` hands changed ones on)."""
    from detforge.models.base import Detector

    model = create_model(name, score_thresh=0.2, nms_thresh=0.45, max_detections_per_image=7, pre_nms_topk=50)
    assert isinstance(model, Detector)
    settings = model.postprocess_settings
    assert (settings.score_thresh, settings.nms_thresh, settings.max_detections_per_image) == (0.2, 0.45, 7)
    assert settings.pre_nms_topk == 50
    with pytest.raises(ValueError, match="nms_method must be one of"):
        create_model(name, nms_method="fast")
