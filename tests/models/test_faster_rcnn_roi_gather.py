"""RoIAlign as one weighted gather over all levels, against torchvision's roi_align per level."""

import pytest
import torch
from torchvision.ops import roi_align

from detforge.models.faster_rcnn.roi_gather import gather_roi_align
from detforge.models.faster_rcnn.roi_head import MultiScaleRoIPool

SCALES = (0.25, 0.125, 0.0625)


def _case(k: int = 200, seed: int = 0, channels_last: bool = False):
    g = torch.Generator().manual_seed(seed)
    sizes = ((40, 48), (20, 24), (10, 12))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    features = [torch.randn(3, 8, h, w, generator=g).contiguous(memory_format=fmt) for h, w in sizes]
    xy = torch.rand(k, 2, generator=g) * torch.tensor([210.0, 180.0]) - 15  # some start outside the image
    wh = torch.rand(k, 2, generator=g) * 70 + 0.1  # down to sub-pixel RoIs (torchvision makes them 1 x 1)
    rois = torch.cat([torch.randint(0, 3, (k, 1), generator=g).float(), xy, xy + wh], 1)  # [K, 5]
    rois[:4, 1:] = torch.tensor(
        [[0.0, 0.0, 192.0, 160.0], [190.0, 158.0, 192.0, 160.0], [-30, -30, -10, -5], [0, 0, 0, 0]]
    )
    levels = torch.randint(0, 3, (k,), generator=g)
    return features, rois, levels


def _reference(features, rois, levels, ratio=2):
    out = torch.zeros(rois.shape[0], features[0].shape[1], 7, 7, dtype=features[0].dtype)
    for level, (feature, scale) in enumerate(zip(features, SCALES)):
        idx = torch.where(levels == level)[0]
        out[idx] = roi_align(feature, rois[idx], 7, scale, ratio, aligned=False)
    return out


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("ratio", [1, 2, 3])
def test_values_and_gradients_equal_torchvision(channels_last, ratio):
    features, rois, levels = _case(channels_last=channels_last)
    ours_in = [f.clone().requires_grad_(True) for f in features]
    ref_in = [f.clone().requires_grad_(True) for f in features]
    ours = gather_roi_align(ours_in, rois, levels, SCALES, 7, ratio)
    ref = _reference(ref_in, rois, levels, ratio)
    grad = torch.randn(ours.shape, generator=torch.Generator().manual_seed(1))
    ours.backward(grad)
    ref.backward(grad)
    assert ours.shape == (200, 8, 7, 7)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(ours_in, ref_in):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-5)
    assert ours[2].abs().sum() == 0  # wholly outside the image: zero, as torchvision


def test_no_rois_and_bfloat16():
    features, rois, levels = _case()
    empty = gather_roi_align(features, rois[:0], levels[:0], SCALES, 7, 2)
    assert empty.shape == (0, 8, 7, 7)
    half = gather_roi_align([f.bfloat16() for f in features], rois, levels, SCALES, 7, 2)
    assert half.dtype == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = _reference([f.bfloat16() for f in features], rois, levels)
    torch.testing.assert_close(half, ref)
    with pytest.raises(ValueError, match="sampling_ratio"):
        gather_roi_align(features, rois, levels, SCALES, 7, 0)


def test_multi_scale_pool_gathers_on_cpu_and_traces_torchvision():
    features, rois, _ = _case(seed=3)
    pool = MultiScaleRoIPool((4, 8, 16), 7, 2)
    boxes, image = rois[:, 1:], rois[:, 0].long()
    expected = _reference(features, rois, pool.levels(boxes))
    torch.testing.assert_close(pool(features, boxes, image), expected, rtol=1e-5, atol=1e-5)
    traced = torch.jit.trace(lambda *f: pool(list(f), boxes, image), tuple(features), check_trace=False)
    assert "torchvision::roi_align" in str(traced.graph)
    torch.testing.assert_close(traced(*features), expected, rtol=1e-5, atol=1e-5)
