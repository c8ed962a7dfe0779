import pytest
import torch
from torchvision.ops import box_convert

from detforge.boxes import cxcywh_norm_to_xyxy, scale_boxes, to_xyxy, xyxy_to, xyxy_to_cxcywh_norm


def test_roundtrip_formats():
    boxes = torch.tensor([[10.0, 20.0, 50.0, 80.0], [0.0, 0.0, 1.0, 1.0]])
    for fmt in ("xyxy", "xywh", "cxcywh"):
        assert torch.allclose(to_xyxy(xyxy_to(boxes, fmt), fmt), boxes)
    assert torch.equal(xyxy_to(boxes, "xywh")[0], torch.tensor([10.0, 20.0, 40.0, 60.0]))


def test_yolo_normalised_roundtrip():
    boxes = torch.tensor([[10.0, 20.0, 50.0, 80.0]])
    norm = xyxy_to_cxcywh_norm(boxes, height=100, width=200)
    assert torch.allclose(norm, box_convert(boxes, "xyxy", "cxcywh") / torch.tensor([200, 100, 200, 100]))
    assert torch.allclose(cxcywh_norm_to_xyxy(norm, 100, 200), boxes)


def test_scale_boxes_and_empty():
    boxes = torch.tensor([[10.0, 20.0, 50.0, 80.0]])
    assert torch.allclose(
        scale_boxes(boxes, (100, 200), (50, 400)), torch.tensor([[20.0, 10.0, 100.0, 40.0]])
    )
    assert to_xyxy(torch.zeros(0, 4), "xywh").shape == (0, 4)


def test_unknown_format_lists_allowed():
    with pytest.raises(ValueError, match="xyxy"):
        to_xyxy(torch.zeros(1, 4), "yxyx")
