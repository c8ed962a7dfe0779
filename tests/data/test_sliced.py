"""Sliced training (``SlicedDataset``, ``DetectionDataModule(slice=...)``, ``detforge data slice``): tiles from
the shared geometry, the area-fraction rule against a per-box loop, boxes straddling tile edges, border
cases, the empty-tile ratio, and a written COCO copy that reads back."""

import json

import pytest
import torch

from detforge.commands.data import main as data_main
from detforge.data.coco import CocoDataset
from detforge.data.mosaic import keep_uint8
from detforge.data.sliced import SlicedDataset, crop_target
from detforge.slicing import tile_windows


class Boxes(torch.utils.data.Dataset):
    """Images of given sizes (pixel value = x + y mod 256, so crops can be checked) with given boxes."""

    class_names = ["a", "b", "c"]
    num_classes = 3

    def __init__(self, sizes, boxes):
        self.sizes, self.boxes = sizes, boxes

    def __len__(self):
        return len(self.sizes)

    def __getitem__(self, i):
        h, w = self.sizes[i]
        ramp = (torch.arange(h)[:, None] + torch.arange(w)[None, :]) % 256
        image = ramp.to(torch.uint8).expand(3, h, w).contiguous()
        boxes = torch.tensor(self.boxes[i], dtype=torch.float32).reshape(-1, 4)
        n = len(boxes)
        target = {
            "boxes": boxes,
            "labels": torch.arange(n) % 3,
            "image_id": 100 + i,
            "iscrowd": torch.zeros(n, dtype=torch.bool),
            "ignore": torch.arange(n) % 2 == 1,
            "area": (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]),
        }
        return image, target


def _reference_crop(boxes, labels, window, min_area):
    """Per-box loop: keep a box when >= min_area of its area is in the window; clip, shift."""
    x0, y0, x1, y1 = window
    kept, kept_labels = [], []
    for box, label in zip(boxes.tolist(), labels.tolist()):
        cx0, cy0, cx1, cy1 = max(box[0], x0), max(box[1], y0), min(box[2], x1), min(box[3], y1)
        inside = max(cx1 - cx0, 0) * max(cy1 - cy0, 0)
        if inside > 0 and inside >= min_area * (box[2] - box[0]) * (box[3] - box[1]) - 1e-6:
            kept.append([cx0 - x0, cy0 - y0, cx1 - x0, cy1 - y0])
            kept_labels.append(label)
    return torch.tensor(kept, dtype=torch.float32).reshape(-1, 4), torch.tensor(
        kept_labels, dtype=torch.int64
    )


@pytest.mark.parametrize("min_area", [0.25, 0.5, 0.9, 1.0])
def test_crop_matches_a_per_box_loop(min_area):
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(200, 2, generator=g) * 300
    wh = torch.rand(200, 2, generator=g) * 60 + 1
    boxes = torch.cat([xy, xy + wh], 1)
    labels = torch.arange(200)
    target = {"boxes": boxes, "labels": labels, "area": torch.ones(200)}
    for window in tile_windows(300, 300, 128, 0.2):
        got = crop_target(target, window, min_area)
        ref_boxes, ref_labels = _reference_crop(boxes, labels, window.tolist(), min_area)
        assert torch.equal(got["labels"], ref_labels)
        torch.testing.assert_close(got["boxes"], ref_boxes)
        assert torch.all(got["boxes"] >= 0) and torch.all(got["boxes"][:, 2:] <= 128)
        assert torch.all(got["area"] <= 1.0) and torch.all(got["area"] >= min_area - 1e-6)
        assert got["size"].tolist() == [int(window[3] - window[1]), int(window[2] - window[0])]


def test_box_straddling_a_tile_edge():
    # One 100 x 20 box across the vertical edge x = 64 of two 64-px tiles (no overlap): 30 px left, 70 right.
    ds = Boxes([(64, 128)], [[[34, 10, 134 - 6, 30]]])  # x 34..128: 30 left of 64, 64 right
    tiles = SlicedDataset(ds, 64, overlap=0.0, min_area=0.3, seed=0)
    assert tiles.windows.tolist() == [[0, 0, 64, 64], [64, 0, 128, 64]]
    items = {int(t["tile"][0]): t for _, t in (tiles[i] for i in range(len(tiles)))}
    assert set(items) == {0, 64}  # 30/94 = 0.32 and 64/94 = 0.68 of the box: kept in both
    assert items[0]["boxes"].tolist() == [[34, 10, 64, 30]] and items[64]["boxes"].tolist() == [
        [0, 10, 64, 30]
    ]
    torch.testing.assert_close(items[0]["area"] + items[64]["area"], torch.tensor([94.0 * 20]))
    strict = SlicedDataset(ds, 64, overlap=0.0, min_area=0.5, seed=0)  # only the right part keeps it
    assert len(strict) == 1 and strict[0][1]["tile"].tolist() == [64, 0, 128, 64]


def test_pixels_ids_and_per_box_entries():
    ds = Boxes([(100, 150)], [[[10, 10, 30, 30], [90, 50, 120, 80], [5, 70, 15, 95]]])
    tiles = SlicedDataset(ds, 64, overlap=0.25, seed=0, transforms=keep_uint8)
    full, _ = ds[0]
    seen = set()
    for i in range(len(tiles)):
        image, target = tiles[i]
        x0, y0, x1, y1 = target["tile"].tolist()
        assert torch.equal(image, full[:, y0:y1, x0:x1])
        assert target["source_id"] == 100 and target["image_id"] not in seen
        seen.add(target["image_id"])
        n = len(target["boxes"])
        assert target["labels"].shape == target["ignore"].shape == target["area"].shape == (n,) and n > 0


@pytest.mark.parametrize(
    ("size", "slice_size", "overlap", "expected"),
    [
        ((40, 50), 64, 0.2, [[0, 0, 50, 40]]),  # smaller than the tile: one smaller tile
        ((128, 192), 64, 0.0, [[x, y, x + 64, y + 64] for y in (0, 64) for x in (0, 64, 128)]),  # exact
        ((64, 64), 64, 0.5, [[0, 0, 64, 64]]),  # exactly one tile
    ],
)
def test_border_cases(size, slice_size, overlap, expected):
    h, w = size
    ds = Boxes([size], [[[0, 0, w, h]]])  # one box over the whole image
    tiles = SlicedDataset(ds, slice_size, overlap=overlap, min_area=0.01, seed=0)
    assert tiles.windows.tolist() == expected and len(tiles) == len(expected)
    for i in range(len(tiles)):
        image, target = tiles[i]
        x0, y0, x1, y1 = target["tile"].tolist()
        assert image.shape == (3, y1 - y0, x1 - x0) and image.dtype == torch.float32
        assert target["boxes"].tolist() == [[0, 0, x1 - x0, y1 - y0]]


def test_empty_tile_ratio():
    # 4 x 4 tiles of 32 px, objects in two of them: 2 non-empty, 14 empty.
    ds = Boxes([(128, 128)], [[[4, 4, 20, 20], [70, 70, 90, 90]]])
    assert len(SlicedDataset(ds, 32, overlap=0.0, empty_ratio=0.0)) == 2
    fixed = SlicedDataset(ds, 32, overlap=0.0, empty_ratio=2.0, seed=3)
    assert len(fixed) == 6 and len(fixed.empty) == 14
    empties = [fixed.tile_of(i) for i in range(2, 6)]
    assert len(set(empties)) == 4 and all(len(fixed[i][1]["boxes"]) == 0 for i in range(2, 6))
    assert empties == [fixed.tile_of(i) for i in range(2, 6)]  # an int seed: the same every time
    assert len(SlicedDataset(ds, 32, overlap=0.0, empty_ratio=100.0)) == 16  # at most every empty tile
    drawn = SlicedDataset(ds, 32, overlap=0.0, empty_ratio=1.0)  # seed None: torch's generator
    torch.manual_seed(0)
    first = [drawn.tile_of(i) for i in range(2, 4)]
    torch.manual_seed(0)
    assert first == [drawn.tile_of(i) for i in range(2, 4)]
    with pytest.raises(ValueError, match="min_area"):
        SlicedDataset(ds, 32, min_area=0.0)
    with pytest.raises(ValueError, match="overlap"):
        SlicedDataset(ds, 32, overlap=1.0)


def test_data_module_slices_training_only():
    from detforge.data.datamodule import DetectionDataModule

    ds = Boxes([(100, 150), (60, 60)], [[[10, 10, 30, 30], [90, 50, 120, 80]], [[5, 5, 50, 50]]])
    dm = DetectionDataModule(ds, val_data=ds, imgsz=64, slice=64, overlap=0.25, num_workers=0, batch_size=4)
    dm.setup("fit")
    assert isinstance(dm.train_dataset, SlicedDataset) and dm.num_classes == 3
    images, targets = next(iter(dm.train_dataloader()))
    assert images.shape[-2:] == (64, 64) and all("tile" in t for t in targets)
    assert dm.val_dataset is ds
    with pytest.raises(ValueError, match="slice_min_area"):
        DetectionDataModule(ds, slice=64, slice_min_area=0.0)


def test_data_slice_writes_a_coco_copy_that_reads_back(tmp_path, capsys):
    argv = ["slice", "synthetic-dense:1", str(tmp_path), "--slice", "256", "--overlap", "0.2"]
    assert data_main(argv + ["--empty-ratio", "0.5"]) == 0
    assert "tiles" in capsys.readouterr().out
    from detforge.data.spec import build_dataset

    source = build_dataset("synthetic-dense:1", transforms=keep_uint8)
    expected = SlicedDataset(source, 256, seed=0, empty_ratio=0.5, transforms=keep_uint8)
    ann = tmp_path / "annotations" / "instances_train.json"
    back = CocoDataset(tmp_path / "train", ann, transforms=keep_uint8)
    assert len(back) == len(expected) == len(json.loads(ann.read_text())["images"])
    by_id = {back[i][1]["image_id"]: back[i] for i in range(len(back))}
    for i in range(len(expected)):
        image, target = expected[i]
        got_image, got_target = by_id[target["image_id"]]
        assert torch.equal(got_image, image)
        torch.testing.assert_close(got_target["boxes"], target["boxes"], atol=1e-3, rtol=0)
        assert torch.equal(got_target["labels"], target["labels"])


def test_file_readers_are_indexed_from_their_annotations(make_coco, monkeypatch):
    image_dir, ann_file = make_coco()
    coco = CocoDataset(image_dir, ann_file, transforms=keep_uint8)
    from_annotations = SlicedDataset(coco, 32, overlap=0.25, empty_ratio=1.0, seed=0)

    class Loaded(torch.utils.data.Dataset):  # the same samples, without the parsed records
        def __len__(self):
            return len(coco)

        def __getitem__(self, i):
            return coco[i]

    monkeypatch.setattr(CocoDataset, "__getitem__", lambda self, i: pytest.fail("loaded an image to index"))
    assert len(SlicedDataset(coco, 32, overlap=0.25)) > 0  # indexing reads no image
    monkeypatch.undo()
    loaded = SlicedDataset(Loaded(), 32, overlap=0.25, empty_ratio=1.0, seed=0)
    assert torch.equal(from_annotations.windows, loaded.windows)
    assert torch.equal(from_annotations.nonempty, loaded.nonempty) and len(from_annotations) == len(loaded)
    for i in range(len(loaded)):
        a, b = from_annotations[i], loaded[i]
        assert torch.equal(a[0], b[0]) and torch.equal(a[1]["boxes"], b[1]["boxes"])
        assert torch.equal(a[1]["iscrowd"], b[1]["iscrowd"])
