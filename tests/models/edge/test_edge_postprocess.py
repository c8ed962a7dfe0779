"""The edge detectors' post-processing is the shared one: equal to a plain per-image loop written here."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import batched_nms

from detforge.models import create_model
from detforge.postprocess import detect


def _reference(scores, boxes, level_sizes, image_sizes, score_thresh, nms_thresh, topk, max_det):
    """Per image: per level the ``topk`` best (location, class) pairs, scores above ``score_thresh``, boxes
    clipped to the image, NMS per class, the ``max_det`` best. Returns per image (boxes, scores, labels,
    location index)."""
    num_classes = scores.shape[-1]
    out = []
    for image_scores, image_boxes, (h, w) in zip(scores, boxes, image_sizes, strict=True):
        cand_s, cand_i = [], []
        start = 0
        for size in level_sizes:
            flat = image_scores[start : start + size].reshape(-1)  # [P_l * C]
            s, i = flat.topk(min(topk, flat.numel()))
            cand_s.append(s)
            cand_i.append(i + start * num_classes)
            start += size
        s, i = torch.cat(cand_s), torch.cat(cand_i)
        keep = s > score_thresh
        s, i = s[keep], i[keep]
        point, label = i // num_classes, i % num_classes
        b = image_boxes[point].clone()
        b[:, 0::2] = b[:, 0::2].clamp(0, w)
        b[:, 1::2] = b[:, 1::2].clamp(0, h)
        kept = batched_nms(b, s, label, nms_thresh)[:max_det]
        out.append((b[kept], s[kept], label[kept], point[kept]))
    return out


def _random_outputs(model, size):
    """Outputs of a forward with random head maps: varied scores and boxes, many overlapping."""
    with torch.no_grad():
        out = model(torch.rand(2, model.in_chans, *size))
    gen = torch.Generator().manual_seed(0)
    for key, value in out.items():
        if key == "p3":
            continue
        for t in value if isinstance(value, list) else [value]:
            t.copy_(torch.randn(t.shape, generator=gen) * (2.0 if key != "bbox_pred" else 0.5))
    for t in out.get("bbox_pred", []) if "centerness" in out else []:
        t.copy_(t.abs() * 8 + 2)  # Nexus: positive side distances in pixels
    return out


@pytest.mark.parametrize("name", ["nexus", "phantom", "nightvision_edge", "nightvision_multi_domain"])
def test_postprocess_equals_a_per_image_loop(name):
    torch.manual_seed(0)
    num_classes = {"phantom": 1}.get(name, 3)
    model = create_model(name, num_classes=num_classes).eval()
    model.set_postprocess(score_thresh=0.3, nms_thresh=0.5, pre_nms_topk=9, max_detections_per_image=6)
    size = (64, 48)
    out = _random_outputs(model, size)
    image_sizes = [(64, 48), (40, 44)]
    got = model.postprocess(out, image_sizes)
    scores, boxes = model.decode(out)
    want = _reference(scores, boxes, model.level_sizes(out), image_sizes, 0.3, 0.5, 9, 6)
    log_var = None
    if "bbox_log_var" in out:
        log_var = torch.cat([t.flatten(2).transpose(1, 2) for t in out["bbox_log_var"]], dim=1)  # [B, P, 4]
    assert sum(len(w[1]) for w in want) > 4  # not vacuous
    assert any(len(w[1]) == 6 for w in want)  # the max-detections cut is exercised
    for i, (det, (b, s, lab, point)) in enumerate(zip(got, want, strict=True)):
        torch.testing.assert_close(det["scores"], s)
        torch.testing.assert_close(det["boxes"], b)
        assert torch.equal(det["labels"], lab)
        if log_var is not None:
            torch.testing.assert_close(det["box_log_var"], log_var[i, point])
        if model.init_args.get("domain_head"):
            assert det["domain"] == int(out["domain_logits"][i].argmax())


def test_reference_differs_without_the_topk():
    """The per-level top-k matters on these outputs: the check above could tell a missing top-k."""
    torch.manual_seed(0)
    model = create_model("nightvision_edge", num_classes=3).eval()
    out = _random_outputs(model, (64, 48))
    scores, boxes = model.decode(out)
    sizes = [(64, 48)] * 2
    few = _reference(scores, boxes, model.level_sizes(out), sizes, 0.3, 0.5, 9, 100)
    many = _reference(scores, boxes, model.level_sizes(out), sizes, 0.3, 0.5, 10_000, 100)
    assert sum(len(f[1]) for f in few) < sum(len(m[1]) for m in many)


def test_detect_extras_are_gathered_and_checked():
    scores = torch.tensor([[[0.9], [0.1], [0.8]]])  # [1, 3, 1]
    boxes = torch.tensor([[[0.0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30]]])  # [1, 3, 4]
    extra = torch.tensor([[[1.0, 1], [2, 2], [3, 3]]])  # [1, 3, 2]
    det = detect(scores, boxes, [3], [(40, 40)], score_thresh=0.5, extras={"var": extra})[0]
    assert det["var"].tolist() == [[1.0, 1.0], [3.0, 3.0]]
    with pytest.raises(ValueError, match="extra 'var'"):
        detect(scores, boxes, [3], [(40, 40)], extras={"var": extra[:, :2]})
