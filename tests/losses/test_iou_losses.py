import math

import pytest
import torch
from torchvision.ops import complete_box_iou_loss, distance_box_iou_loss, generalized_box_iou_loss

from detforge.losses import CIoULoss, DIoULoss, GIoULoss, IoULoss, get_loss, paired_box_iou


def _reference(p, t, kind: str) -> float:
    """The textbook formula for one pair of xyxy boxes, in plain Python floats."""
    iw = max(0.0, min(p[2], t[2]) - max(p[0], t[0]))
    ih = max(0.0, min(p[3], t[3]) - max(p[1], t[1]))
    inter = iw * ih
    wp, hp, wt, ht = p[2] - p[0], p[3] - p[1], t[2] - t[0], t[3] - t[1]
    union = wp * hp + wt * ht - inter
    iou = inter / union
    cw, ch = max(p[2], t[2]) - min(p[0], t[0]), max(p[3], t[3]) - min(p[1], t[1])
    if kind == "log":
        return -math.log(iou)
    if kind == "linear":
        return 1 - iou
    if kind == "giou":
        return 1 - iou + (cw * ch - union) / (cw * ch)
    rho2 = ((p[0] + p[2]) / 2 - (t[0] + t[2]) / 2) ** 2 + ((p[1] + p[3]) / 2 - (t[1] + t[3]) / 2) ** 2
    diou = 1 - iou + rho2 / (cw**2 + ch**2)
    if kind == "diou":
        return diou
    v = 4 / math.pi**2 * (math.atan(wt / ht) - math.atan(wp / hp)) ** 2
    return diou + v / (1 - iou + v) * v


def _random_pairs(n: int, overlapping: bool) -> tuple[torch.Tensor, torch.Tensor]:
    xy = torch.rand(n, 2) * 50
    wh = torch.rand(n, 2) * 40 + 1
    target = torch.cat([xy, xy + wh], 1)
    shift = (torch.rand(n, 2) - 0.5) * wh * (0.6 if overlapping else 8)
    pwh = wh * (0.5 + torch.rand(n, 2))
    pred = torch.cat([xy + shift, xy + shift + pwh], 1)
    return pred, target


CASES = [
    (lambda **kw: IoULoss(mode="log", **kw), "log"),
    (lambda **kw: IoULoss(mode="linear", **kw), "linear"),
    (GIoULoss, "giou"),
    (DIoULoss, "diou"),
    (CIoULoss, "ciou"),
]


@pytest.mark.parametrize("make,kind", CASES)
def test_matches_formula(make, kind):
    pred, target = _random_pairs(40, overlapping=True)
    pred, target = pred.double(), target.double()
    loss = make(reduction="none")(pred, target)
    ref = torch.tensor(
        [_reference(p.tolist(), t.tolist(), kind) for p, t in zip(pred, target)], dtype=torch.float64
    )
    assert torch.allclose(loss, ref, rtol=1e-5, atol=1e-6)
    assert torch.allclose(make()(pred, target), ref.mean(), rtol=1e-5)
    assert torch.allclose(make(reduction="sum")(pred, target), ref.sum(), rtol=1e-5)


@pytest.mark.parametrize("overlapping", [True, False])
@pytest.mark.parametrize(
    "ours,twin",
    [
        (GIoULoss, generalized_box_iou_loss),
        (DIoULoss, distance_box_iou_loss),
        (CIoULoss, complete_box_iou_loss),
    ],
)
def test_matches_torchvision(ours, twin, overlapping):
    pred, target = _random_pairs(50, overlapping)
    for reduction in ("none", "mean", "sum"):
        assert torch.allclose(
            ours(reduction=reduction)(pred, target), twin(pred, target, reduction), atol=1e-5
        )
    assert torch.allclose(GIoULoss().compute(pred, target), generalized_box_iou_loss(pred, target, "mean"))


@pytest.mark.parametrize("make,kind", CASES)
def test_ltrb_equals_xyxy_around_the_point(make, kind):
    ltrb_t = torch.rand(30, 4) * 20 + 0.5
    ltrb_p = torch.rand(30, 4) * 20 + 0.5
    points = torch.rand(30, 2) * 100
    to_xyxy = lambda d: torch.cat([points - d[:, :2], points + d[:, 2:]], 1)  # noqa: E731
    got = make(box_format="ltrb", reduction="none")(ltrb_p, ltrb_t)
    want = make(reduction="none")(to_xyxy(ltrb_p), to_xyxy(ltrb_t))
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-5)


def test_ltrb_iou_is_fcos_iou():
    """FCOS's IOULoss: intersection from min distances, union from areas, no anchor points."""
    p, t = torch.rand(20, 4) * 10, torch.rand(20, 4) * 10
    area_p = (p[:, 0] + p[:, 2]) * (p[:, 1] + p[:, 3])
    area_t = (t[:, 0] + t[:, 2]) * (t[:, 1] + t[:, 3])
    w = torch.min(p[:, 0], t[:, 0]) + torch.min(p[:, 2], t[:, 2])
    h = torch.min(p[:, 1], t[:, 1]) + torch.min(p[:, 3], t[:, 3])
    inter = w * h
    iou = inter / (area_p + area_t - inter)
    got = IoULoss(mode="linear", box_format="ltrb", reduction="none")(p, t)
    assert torch.allclose(got, 1 - iou, atol=1e-5)


DEGENERATE = {
    "disjoint": ([0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]),
    "touching": ([0.0, 0.0, 10.0, 10.0], [10.0, 0.0, 20.0, 10.0]),
    "nested": ([2.0, 2.0, 5.0, 5.0], [0.0, 0.0, 10.0, 10.0]),
    "identical": ([1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0]),
    "zero_area_pred": ([5.0, 5.0, 5.0, 5.0], [0.0, 0.0, 10.0, 10.0]),
    "zero_height_pred": ([0.0, 5.0, 8.0, 5.0], [0.0, 0.0, 10.0, 10.0]),
    "zero_area_both": ([5.0, 5.0, 5.0, 5.0], [5.0, 5.0, 5.0, 5.0]),
    "on_image_border": ([0.0, 0.0, 3.0, 640.0], [0.0, 0.0, 4.0, 640.0]),
}


@pytest.mark.parametrize("name", ["iou", "giou", "diou", "ciou"])
@pytest.mark.parametrize("case", sorted(DEGENERATE))
def test_finite_loss_and_gradient_on_hard_pairs(name, case):
    p, t = DEGENERATE[case]
    pred = torch.tensor([p], requires_grad=True)
    loss = get_loss(name)(pred, torch.tensor([t]))
    loss.backward()
    assert torch.isfinite(loss), (name, case, loss)
    assert torch.isfinite(pred.grad).all(), (name, case, pred.grad)


@pytest.mark.parametrize("name", ["giou", "diou", "ciou"])
def test_disjoint_boxes_get_a_pulling_gradient(name):
    pred = torch.tensor([[0.0, 0.0, 10.0, 10.0]], requires_grad=True)
    get_loss(name)(pred, torch.tensor([[20.0, 20.0, 30.0, 30.0]])).backward()
    # Plain IoU is flat here; these losses pull the near corner (x2, y2) towards the target.
    assert (pred.grad[0, 2:] < 0).all(), pred.grad


def test_identical_boxes_give_zero_loss():
    boxes = _random_pairs(10, True)[1]
    for name in ("giou", "diou", "ciou"):
        assert get_loss(name, reduction="sum")(boxes, boxes).abs() < 1e-5
    assert IoULoss(mode="linear", reduction="sum")(boxes, boxes).abs() < 1e-5


@pytest.mark.parametrize("name", ["iou", "giou", "diou", "ciou"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_zero_boxes_give_connected_zero(name, reduction):
    pred = torch.zeros(0, 4, requires_grad=True)
    loss = get_loss(name, reduction=reduction)(pred, torch.zeros(0, 4))
    assert loss.item() == 0.0 and loss.grad_fn is not None
    loss.backward()
    assert get_loss(name, reduction="none")(pred, torch.zeros(0, 4)).shape == (0,)


def test_weight_is_a_weighted_mean():
    pred, target = _random_pairs(6, True)
    w = torch.tensor([0.5, 1.0, 0.0, 2.0, 0.1, 0.3])
    per = GIoULoss(reduction="none")(pred, target)
    assert torch.allclose(GIoULoss()(pred, target, w), (per * w).sum() / w.sum())
    assert torch.allclose(GIoULoss(reduction="sum")(pred, target, w), (per * w).sum())
    zero = GIoULoss()(pred, target, torch.zeros(6))
    assert zero.item() == 0.0


@pytest.mark.parametrize("name", ["iou", "giou", "diou", "ciou"])
def test_half_precision_runs_in_float32(name):
    p, t = DEGENERATE["zero_area_both"]
    pred = torch.tensor([p], dtype=torch.float16, requires_grad=True)
    loss = get_loss(name)(pred, torch.tensor([t], dtype=torch.float16))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert pred.grad.dtype == torch.float16 and torch.isfinite(pred.grad).all()


def test_paired_box_iou_matches_torchvision_diagonal():
    from torchvision.ops import box_iou

    pred, target = _random_pairs(12, True)
    assert torch.allclose(paired_box_iou(pred, target), box_iou(pred, target).diagonal(), atol=1e-6)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="'xyxy', 'ltrb'"):
        GIoULoss(box_format="cxcywh")
    with pytest.raises(ValueError, match="'log', 'linear'"):
        IoULoss(mode="square")
    with pytest.raises(ValueError, match="'none', 'mean', 'sum'"):
        CIoULoss(reduction="batchmean")
    with pytest.raises(ValueError, match=r"DIoULoss.*\(3, 4\).*\(2, 4\)"):
        DIoULoss()(torch.zeros(3, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="4 coordinates"):
        GIoULoss()(torch.zeros(3, 5), torch.zeros(3, 5))
