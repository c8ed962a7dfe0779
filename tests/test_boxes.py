import numpy as np
import pytest
import torch
from torchvision.ops import box_convert

from detforge.boxes import (
    convert_boxes,
    cxcywh_norm_to_xyxy,
    scale_boxes,
    to_xyxy,
    voc_to_xyxy,
    xyxy_to,
    xyxy_to_cxcywh_norm,
    xyxy_to_voc,
)


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


def test_convert_boxes_keeps_shape_dtype_and_type():
    boxes = torch.tensor(
        [[[10.0, 20.0, 50.0, 80.0]], [[0.5, 1.5, 2.0, 4.0]]], dtype=torch.float64
    )  # [2, 1, 4]
    xywh = convert_boxes(boxes, "xyxy", "xywh")
    assert xywh.shape == (2, 1, 4) and xywh.dtype == torch.float64
    assert torch.equal(xywh[0, 0], torch.tensor([10.0, 20.0, 40.0, 60.0], dtype=torch.float64))
    cxcywh = convert_boxes(boxes, "xyxy", "cxcywh")
    assert torch.equal(cxcywh[1, 0], torch.tensor([1.25, 2.75, 1.5, 2.5], dtype=torch.float64))
    for fmt in ("xyxy", "xywh", "cxcywh"):
        assert torch.equal(convert_boxes(convert_boxes(boxes, "xyxy", fmt), fmt, "xyxy"), boxes)
    # the [N, 4] float32 helpers agree with it
    flat = boxes.reshape(-1, 4).float()
    assert torch.equal(to_xyxy(convert_boxes(flat, "xyxy", "xywh"), "xywh"), flat)
    # ndarray in, ndarray out, float64 kept (COCO readers and the evaluator)
    arr = np.array([[1.0, 2.0, 3.0, 4.0]], dtype=np.float64)[:, ::-1]  # a non-contiguous view
    out = convert_boxes(arr, "xywh", "xyxy")
    assert isinstance(out, np.ndarray) and out.dtype == np.float64
    np.testing.assert_array_equal(out, [[4.0, 3.0, 6.0, 4.0]])
    with pytest.raises(ValueError, match="xyxy"):
        convert_boxes(boxes, "xyxy", "yxyx")


def test_voc_corners():
    voc = torch.tensor([[1.0, 1.0, 10.0, 20.0], [48.0, 240.0, 195.0, 371.0]])  # 1-based pixel indices
    xyxy = voc_to_xyxy(voc)
    # pixels 1..10 are 10 pixels wide: continuous [0, 10]
    assert torch.equal(xyxy, torch.tensor([[0.0, 0.0, 10.0, 20.0], [47.0, 239.0, 195.0, 371.0]]))
    assert torch.equal(xyxy_to_voc(xyxy), voc)
    arr = voc.double().numpy()
    assert isinstance(voc_to_xyxy(arr), np.ndarray) and voc_to_xyxy(arr).dtype == np.float64
    np.testing.assert_array_equal(xyxy_to_voc(voc_to_xyxy(arr)), arr)
    assert voc_to_xyxy(torch.tensor([[1, 1, 2, 2]])).is_floating_point()


def test_rel_cxcywh_with_per_image_sizes_matches_the_per_image_converter():
    from detforge.boxes import rel_cxcywh_to_xyxy, xyxy_to_cxcywh_norm, xyxy_to_rel_cxcywh

    boxes = torch.tensor(
        [[[2.0, 4.0, 30.0, 20.0], [0.0, 0.0, 96.0, 64.0]], [[5.0, 1.0, 9.0, 40.0], [1, 2, 3, 4]]]
    )
    sizes = torch.tensor([[64, 96], [48, 80]])  # (h, w) of each image
    rel = xyxy_to_rel_cxcywh(boxes, sizes[:, None, :])  # [2, 2, 4]
    for i, (h, w) in enumerate(sizes.tolist()):
        torch.testing.assert_close(rel[i], xyxy_to_cxcywh_norm(boxes[i], h, w))
    torch.testing.assert_close(rel_cxcywh_to_xyxy(rel, sizes[:, None, :]), boxes)
