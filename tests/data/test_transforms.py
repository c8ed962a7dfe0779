import pytest
import torch

from detforge.data.transforms import PAD_VALUE, build_train_transforms, build_val_transforms, pad_value


def _painted(height, width, boxes, channels=3):
    """Black uint8 image with each (integer) box filled white; the reference for where boxes must go."""
    image = torch.zeros(channels, height, width, dtype=torch.uint8)
    for x1, y1, x2, y2 in boxes.round().long().tolist():
        image[:, y1:y2, x1:x2] = 255
    return image


def _target(boxes, **extra):
    boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    n = boxes.shape[0]
    target = {
        "boxes": boxes,
        "labels": torch.arange(n, dtype=torch.int64),
        "image_id": 7,
        "orig_size": torch.tensor([0, 0]),
        "size": torch.tensor([0, 0]),
        "iscrowd": torch.zeros(n, dtype=torch.bool),
        "ignore": torch.arange(n) % 2 == 1,
        "area": (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]),
    }
    target.update(extra)
    return target


def _white_bbox(image):
    """xyxy of the pixels brighter than mid-grey (over all channels)."""
    ys, xs = torch.nonzero((image > 0.75).all(dim=0), as_tuple=True)
    return torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)


@pytest.mark.parametrize("channels", [1, 3])
def test_val_letterbox_scales_keeps_ratio_and_pads_bottom_right(channels):
    boxes = torch.tensor([[10.0, 20.0, 50.0, 60.0], [0.0, 0.0, 100.0, 4.0], [150.0, 70.0, 200.0, 100.0]])
    image = _painted(100, 200, boxes[:1], channels)
    out, target = build_val_transforms(64)(image, _target(boxes))
    assert out.shape == (channels, 64, 64) and out.dtype == torch.float32
    assert target["size"].tolist() == [32, 64]  # unpadded content, for mapping predictions back
    scale = 64 / 200
    torch.testing.assert_close(target["boxes"], boxes * scale)
    torch.testing.assert_close(target["area"], _target(boxes)["area"] * scale**2)
    assert torch.allclose(out[:, 32:, :], torch.tensor(PAD_VALUE / 255))  # bottom padding only
    assert (_white_bbox(out) - target["boxes"][0]).abs().max() <= 1.0
    assert target["image_id"] == 7 and target["labels"].tolist() == [0, 1, 2]


def test_val_plain_resize_stretches():
    boxes = torch.tensor([[10.0, 20.0, 50.0, 60.0]])
    out, target = build_val_transforms(50, letterbox=False)(_painted(100, 200, boxes), _target(boxes))
    assert out.shape == (3, 50, 50) and target["size"].tolist() == [50, 50]
    torch.testing.assert_close(target["boxes"], boxes * torch.tensor([0.25, 0.5, 0.25, 0.5]))


def test_hflip_mirrors_boxes():
    boxes = torch.tensor([[10.0, 20.0, 30.0, 60.0]])
    tf = build_train_transforms(64, hflip=1.0, photometric=False, scale_jitter=None)
    out, target = tf(_painted(64, 64, boxes), _target(boxes))
    torch.testing.assert_close(target["boxes"], torch.tensor([[34.0, 20.0, 54.0, 60.0]]))
    assert torch.equal(_white_bbox(out), target["boxes"][0])


@pytest.mark.parametrize("letterbox", [True, False])
def test_random_train_geometry_moves_boxes_with_pixels(letterbox):
    """Reference: the white rectangle painted under the box must still sit under the transformed box."""
    tf = build_train_transforms(
        96, letterbox=letterbox, photometric=False, scale_jitter=(0.6, 1.6), iou_crop=0.3, hflip=0.5
    )
    checked = 0
    for seed in range(20):
        torch.manual_seed(seed)
        boxes = torch.tensor([[40.0, 30.0, 90.0, 70.0]])
        out, target = tf(_painted(120, 160, boxes), _target(boxes))
        assert out.shape == (3, 96, 96) and out.dtype == torch.float32
        assert out.min() >= 0.0 and out.max() <= 1.0
        if target["boxes"].shape[0] == 0:
            continue  # cropped away together with its per-box entries
        box = target["boxes"][0]
        if (box[2:] - box[:2]).min() < 6:
            continue
        assert (_white_bbox(out) - box).abs().max() <= 1.5, seed
        checked += 1
    assert checked >= 10


def test_sanitize_filters_every_per_box_entry_together():
    # Boxes spread over a large image; a strong zoom keeps only some, and the survivors must stay aligned.
    boxes = torch.tensor([[x, y, x + 12.0, y + 12.0] for x in range(0, 300, 30) for y in range(0, 300, 60)])
    n = boxes.shape[0]
    tf = build_train_transforms(64, scale_jitter=(2.0, 2.0), photometric=True, hflip=0.5)
    for seed in range(5):
        torch.manual_seed(seed)
        target = _target(boxes, track_ids=torch.arange(n) + 100)
        _, out = tf(torch.zeros(3, 300, 300, dtype=torch.uint8), target)
        kept = out["labels"]
        assert 0 < len(kept) < n
        for key in ("boxes", "iscrowd", "ignore", "area", "track_ids"):
            assert out[key].shape[0] == len(kept), key
        assert torch.equal(out["track_ids"], kept + 100)
        assert torch.equal(out["ignore"], kept % 2 == 1)
        assert torch.all(out["area"] > 0)
        assert "_row" not in out and "_content_size" not in out


@pytest.mark.parametrize(
    "boxes", [torch.zeros(0, 4), torch.tensor([[0.0, 0.0, 5.0, 64.0]])], ids=["none", "border"]
)
def test_zero_boxes_and_border_boxes(boxes):
    for tf in (build_train_transforms(32), build_val_transforms(32)):
        out, target = tf(torch.randint(0, 255, (3, 64, 48), dtype=torch.uint8), _target(boxes))
        assert out.shape == (3, 32, 32)
        n = target["boxes"].shape[0]
        assert target["boxes"].shape == (n, 4) and target["labels"].shape == (n,)
        assert torch.all(target["boxes"] >= 0) and torch.all(target["boxes"] <= 32)


def test_float_input_and_normalisation():
    image = torch.rand(3, 40, 40)
    out, _ = build_val_transforms(40)(image, _target(torch.zeros(0, 4)))
    torch.testing.assert_close(out, image)
    out, _ = build_val_transforms(40, normalize=True, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))(
        image, _target(torch.zeros(0, 4))
    )
    torch.testing.assert_close(out, image * 2 - 1)


def test_mismatched_per_box_entry_names_the_image():
    target = _target(torch.tensor([[0.0, 0.0, 5.0, 5.0]]))
    target["labels"] = torch.tensor([1, 2])
    with pytest.raises(ValueError, match="image_id=7.*'labels'"):
        build_val_transforms(32)(torch.zeros(3, 8, 8, dtype=torch.uint8), target)


def test_bad_options_raise():
    with pytest.raises(ValueError, match="scale_jitter"):
        build_train_transforms(64, scale_jitter=(1.5, 0.5))
    with pytest.raises(ValueError, match="probabilities"):
        build_train_transforms(64, hflip=2.0)
    with pytest.raises(ValueError, match="imgsz"):
        build_val_transforms(0)


def test_train_pipeline_on_single_channel_images():
    boxes = torch.tensor([[4.0, 4.0, 20.0, 30.0]])
    for seed in range(5):
        torch.manual_seed(seed)
        out, target = build_train_transforms(48)(_painted(40, 60, boxes, channels=1), _target(boxes))
        assert out.shape == (1, 48, 48) and target["boxes"].shape[0] == target["labels"].shape[0]


def test_letterbox_pads_float_and_uint8_images_with_the_same_grey():
    """One padding value: a float image in [0, 1] gets PAD_VALUE / 255, not 114.0."""
    assert pad_value(torch.uint8) == PAD_VALUE == 114
    assert pad_value(torch.float32) == pytest.approx(PAD_VALUE / 255, abs=1e-7)
    image = _painted(32, 64, torch.tensor([[4.0, 4.0, 20.0, 20.0]]))
    from_uint8, _ = build_val_transforms(64)(image, _target(torch.zeros(0, 4)))
    from_float, _ = build_val_transforms(64)(image.float() / 255, _target(torch.zeros(0, 4)))
    assert torch.allclose(from_float[:, 32:, :], torch.tensor(PAD_VALUE / 255))
    torch.testing.assert_close(from_float, from_uint8, atol=1 / 255, rtol=0)
