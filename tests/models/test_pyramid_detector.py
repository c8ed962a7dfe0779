import pytest
import torch

from detforge.models.fcos import FCOS
from detforge.models.pyramid_detector import PyramidDetector, check_labels, mean_over_ranks
from detforge.models.yolox import YOLOX

BUILDERS = {
    "fcos": lambda **kw: FCOS("resnet10t", 3, fpn_channels=16, head_num_convs=1, **kw),
    "yolox": lambda **kw: YOLOX("resnet10t", 3, fpn_channels=16, head_width=16, head_num_convs=1, **kw),
}


@pytest.mark.parametrize("name", list(BUILDERS))
def test_checkpoint_layout_is_pyramid_then_head(name):
    model = BUILDERS[name](input_size=(96, 128), in_chans=3)
    assert isinstance(model, PyramidDetector)
    assert model.num_classes == 3 and model.in_chans == 3 and model.default_input_size == (96, 128)
    assert model.strides == model.features.strides
    # Checkpoints written before the shared base class hold exactly these top-level modules, in this order.
    tops = list(dict.fromkeys(k.split(".")[0] for k in model.state_dict()))
    assert tops == ["features", "head"]
    assert {k.split(".")[1] for k in model.state_dict() if k.startswith("features.")} == {"body", "fpn"}


@pytest.mark.parametrize("name", list(BUILDERS))
def test_channels_last_covers_the_head_and_keeps_outputs(name):
    torch.manual_seed(0)
    fast = BUILDERS[name](channels_last=True)
    torch.manual_seed(0)
    plain = BUILDERS[name](channels_last=False)
    convs = {k: v for k, v in fast.state_dict().items() if v.dim() == 4}
    assert any(k.startswith("head.") for k in convs)
    for key, weight in convs.items():
        assert weight.is_contiguous(memory_format=torch.channels_last), key
        assert plain.state_dict()[key].is_contiguous(), key
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        a, b = fast.eval()(images), plain.eval()(images)
    assert a["feat_sizes"] == b["feat_sizes"]
    for key in a:
        if key != "feat_sizes":
            torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
    sizes = [(50, 40)]
    for da, db in zip(fast.postprocess(a, sizes), plain.postprocess(b, sizes), strict=True):
        torch.testing.assert_close(da["scores"], db["scores"], rtol=1e-4, atol=1e-5)


def test_base_class_needs_a_decode():
    model = PyramidDetector(
        "resnet10t",
        2,
        fpn_channels=16,
        extra_levels=0,
        score_thresh=0.05,
        nms_thresh=0.6,
        max_detections_per_image=10,
        pre_nms_topk=100,
        nms_method="hard",
        in_chans=1,
        input_size=(64, 64),
        channels_last=False,
    )
    assert model.strides == (8, 16, 32) and model.in_chans == 1
    with pytest.raises(NotImplementedError, match="decode"):
        model.postprocess({"feat_sizes": [(8, 8)]}, [(64, 64)])
    with pytest.raises(ValueError, match="nms_method must be one of"):
        PyramidDetector("resnet10t", 2, 16, 0, 3, (64, 64), False, nms_method="fast")


def test_check_labels_names_the_first_bad_box():
    labels = torch.tensor([[0, 2, -1], [3, 1, 5]])
    mask = torch.tensor([[True, True, False], [False, True, True]])  # padding may hold anything
    with pytest.raises(ValueError, match=r"target 1 of the batch, box 2: label 5 .* \(1 such boxes"):
        check_labels(labels, mask, 3)
    check_labels(labels, mask & (labels < 3), 3)


def test_mean_over_ranks_single_process_and_ddp(monkeypatch):
    value = torch.tensor(6.0)
    out = mean_over_ranks(value)
    assert out.dtype == torch.float32 and float(out) == 6.0 and not out.requires_grad
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda t: t.add_(10.0))  # the other rank holds 10
    assert float(mean_over_ranks(value)) == 8.0
    assert int(value) == 6  # the caller's tensor is not reduced in place
