"""RoIAlign split over threads (forward by RoI chunks, backward by image), against torchvision's roi_align."""

import pytest
import torch
from torchvision.ops import roi_align

from detforge.models.faster_rcnn.roi_align import pooled_roi_align


def _case(seed=0):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(3, 8, 20, 24, generator=g)
    k = 100  # enough for a chunk per thread
    xy = torch.rand(k, 2, generator=g) * torch.tensor([80.0, 60.0])
    wh = torch.rand(k, 2, generator=g) * 30 + 1
    image = torch.tensor([0, 2] * (k // 2), dtype=torch.float32)  # image 1 has no RoI: its gradient is zero
    image[:3] = 2  # RoIs of one image not contiguous
    rois = torch.cat([image[:, None], xy, xy + wh], 1)  # [K, 5]
    grad = torch.randn(k, 8, 7, 7, generator=g)
    return features, rois, grad


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_gradient_equals_torchvision(threads):
    features, rois, grad = _case()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ours_in = features.clone().requires_grad_(True)
        ours = pooled_roi_align(ours_in, rois, 7, 0.25, 2)
        ours.backward(grad)
    finally:
        torch.set_num_threads(before)
    ref_in = features.clone().requires_grad_(True)
    ref = roi_align(ref_in, rois, 7, 0.25, 2, aligned=False)
    ref.backward(grad)
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)
    torch.testing.assert_close(ours_in.grad, ref_in.grad, rtol=1e-6, atol=1e-6)
    assert ours_in.grad[1].abs().sum() == 0 and ref_in.grad[0].abs().sum() > 0


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_plain_roi_align_where_no_gradient_or_tracing():
    features, rois, _ = _case(1)
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        out = pooled_roi_align(features, rois, 7, 0.25, 2)  # no gradient needed: chunked forward only
    finally:
        torch.set_num_threads(before)
    assert out.grad_fn is None
    torch.testing.assert_close(out, roi_align(features, rois, 7, 0.25, 2, aligned=False), rtol=0, atol=0)
    traced = torch.jit.trace(lambda x: pooled_roi_align(x, rois, 7, 0.25, 2), features.requires_grad_(True))
    graph = str(traced.graph)
    assert "torchvision::roi_align" in graph and "PythonOp" not in graph
    torch.testing.assert_close(traced(features), roi_align(features, rois, 7, 0.25, 2, aligned=False))


@pytest.mark.parametrize("threads", [1, 2])
def test_bfloat16_autocast_equals_torchvision(threads):
    """Under CPU bfloat16 autocast the pool's threads do not see autocast: the features are pooled in float32
    and cast back, as torchvision's autocast kernel does (it raised "not implemented for 'BFloat16'")."""
    features, rois, grad = _case(2)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ours_in = features.bfloat16().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ours = pooled_roi_align(ours_in, rois, 7, 0.25, 2)
        ours.backward(grad.bfloat16())
    finally:
        torch.set_num_threads(before)
    ref_in = features.bfloat16().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = roi_align(ref_in, rois, 7, 0.25, 2, aligned=False)
    ref.backward(grad.bfloat16())
    assert ours.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)
    torch.testing.assert_close(ours_in.grad, ref_in.grad)
