import pytest
import torch
from torch.utils.data import Dataset

from detforge.data.mosaic import Mosaic
from detforge.data.synthetic import SyntheticShapes
from detforge.data.transforms import PAD_VALUE, build_train_transforms

COLOURS = torch.tensor([[250, 10, 10], [10, 250, 10], [10, 10, 250]], dtype=torch.uint8)


class Blocks(Dataset):
    """Images of different sizes with solid blocks whose colour is their label: the reference for mosaics."""

    class_names = ["r", "g", "b"]
    num_classes = 3

    def __init__(self, counts=(2, 0, 1, 3, 1)):
        self.counts = counts
        self.transforms = None

    def __len__(self):
        return len(self.counts)

    def __getitem__(self, i):
        h, w = 40 + 8 * i, 60 - 4 * i
        image = torch.zeros(3, h, w, dtype=torch.uint8)
        boxes, labels = [], []
        for k in range(self.counts[i]):
            x1, y1 = 2 + 12 * k, 3 + 9 * k
            box = [x1, y1, min(x1 + 10, w), min(y1 + 14, h)]
            image[:, box[1] : box[3], box[0] : box[2]] = COLOURS[(i + k) % 3][:, None, None]
            boxes.append(box)
            labels.append((i + k) % 3)
        n = len(labels)
        boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        return image.float() / 255, {
            "boxes": boxes,
            "labels": torch.tensor(labels, dtype=torch.int64),
            "image_id": i,
            "iscrowd": torch.zeros(n, dtype=torch.bool),
            "ignore": torch.tensor([k == 1 for k in range(n)], dtype=torch.bool),
            "area": (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]),
        }


def test_mosaic_boxes_sit_on_their_blocks():
    assert Mosaic(Blocks(), 64).num_classes == 3 and Mosaic(Blocks(), 64).class_names == ["r", "g", "b"]
    seen = 0
    for seed in range(2):
        mosaic = Mosaic(Blocks(), imgsz=64, prob=1.0, seed=seed)
        for i in range(len(mosaic)):
            image, target = mosaic[i]
            assert image.shape == (3, 64, 64) and image.dtype == torch.float32
            assert target["size"].tolist() == [64, 64]
            n = target["boxes"].shape[0]
            for key in ("labels", "iscrowd", "ignore", "area"):
                assert target[key].shape == (n,), key
            boxes = target["boxes"]
            assert torch.all(boxes >= 0) and torch.all(boxes <= 64)
            assert torch.all(boxes[:, 2:] - boxes[:, :2] >= 1)
            for box, label in zip(boxes, target["labels"]):
                x1, y1, x2, y2 = box.floor().long().tolist()
                if x2 - x1 < 3 or y2 - y1 < 3:
                    continue
                cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
                pixel = (image[:, cy, cx] * 255).round().to(torch.uint8)
                assert (pixel.int() - COLOURS[label].int()).abs().max() <= 40
                seen += 1
    assert seen >= 10


def test_seed_makes_mosaics_repeat_and_none_follows_torch():
    data = Blocks()
    a, b = Mosaic(data, 64, seed=3), Mosaic(data, 64, seed=3)
    assert torch.equal(a[2][0], b[2][0]) and torch.equal(a[2][1]["boxes"], b[2][1]["boxes"])
    free = Mosaic(data, 64)
    torch.manual_seed(5)
    first = free[2][0]
    torch.manual_seed(5)
    assert torch.equal(free[2][0], first)


def test_prob_zero_is_a_letterboxed_tile():
    data = Blocks()
    image, target = Mosaic(data, 64, prob=0.0)[3]
    src_image, src_target = data[3]
    scale = 64 / max(src_image.shape[-2:])
    torch.testing.assert_close(target["boxes"], src_target["boxes"] * scale)
    assert torch.equal(target["ignore"], src_target["ignore"])
    h = round(src_image.shape[-2] * scale)
    w = round(src_image.shape[-1] * scale)
    assert h == 64 and w < 64
    assert torch.allclose(image[:, :, w:], torch.tensor(PAD_VALUE / 255))


def test_mosaic_with_train_transforms_and_synthetic_data():
    data = SyntheticShapes(6, image_size=48, min_size=6)
    mosaic = Mosaic(data, 48, transforms=build_train_transforms(48), seed=0)
    for i in range(len(mosaic)):
        image, target = mosaic[i]
        assert image.shape == (3, 48, 48)
        assert target["boxes"].shape[0] == target["labels"].shape[0] == target["ignore"].shape[0]


def test_empty_dataset_and_bad_prob_raise():
    with pytest.raises(ValueError, match="non-empty"):
        Mosaic(Blocks(counts=()), 32)
    with pytest.raises(ValueError, match="prob"):
        Mosaic(Blocks(), 32, prob=1.5)


def test_all_empty_tiles_give_an_empty_target():
    image, target = Mosaic(Blocks(counts=(0, 0)), 32, seed=1)[0]
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
