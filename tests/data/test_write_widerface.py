"""write_widerface: the WIDER FACE layout read back by WiderFaceDataset, the zero-face quirk, invalid faces."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.utils.data import Dataset

from detforge.data.synthetic import SyntheticShapes
from detforge.data.widerface import WiderFaceDataset, parse_wider_gt
from detforge.data.writers import write_widerface


class _Handmade(Dataset):
    """Three 40 x 50 images: two faces (the second ignored, one on the right border), none, a sub-pixel box."""

    class_names = ["face"]

    def __init__(self) -> None:
        self.boxes = [
            torch.tensor([[1.2, 2.0, 11.0, 14.4], [20.0, 5.0, 50.0, 13.0]]),
            torch.zeros(0, 4),
            torch.tensor([[49.8, 39.7, 50.0, 40.0]]),  # rounds to zero size inside the image's last pixel
        ]

    def __len__(self) -> int:
        return len(self.boxes)

    def __getitem__(self, i: int):
        image = torch.rand(3, 40, 50, generator=torch.Generator().manual_seed(i))
        n = len(self.boxes[i])
        ignore = torch.tensor([False, True]) if n == 2 else torch.zeros(n, dtype=torch.bool)
        target = {"boxes": self.boxes[i], "labels": torch.zeros(n, dtype=torch.int64), "image_id": i}
        return image, {**target, "ignore": ignore}


def _read(root, split="train") -> WiderFaceDataset:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a written set reads back without a single issue
        return WiderFaceDataset(root, split=split)


def test_layout_and_ground_truth_lines(tmp_path):
    gt = write_widerface(_Handmade(), tmp_path, split="val", event="3--Riot")
    assert gt == tmp_path / "wider_face_split" / "wider_face_val_bbx_gt.txt"
    assert gt.read_text().splitlines() == [
        "3--Riot/3_000000.png",
        "2",
        "1 2 10 12 0 0 0 0 0 0",
        "20 5 30 8 0 0 0 1 0 0",  # ignore -> invalid
        "3--Riot/3_000001.png",
        "0",
        "0 0 0 0 0 0 0 0 0 0",  # WIDER's zero-face quirk
        "3--Riot/3_000002.png",
        "1",
        "49 39 1 1 0 0 0 0 0 0",  # never zero-sized, never outside the image
    ]
    images = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.png"))
    assert images == [f"WIDER_val/images/3--Riot/3_00000{i}.png" for i in range(3)]


def test_round_trip_through_the_reader(tmp_path):
    written = _Handmade()
    write_widerface(written, tmp_path, split="val")
    read = _read(tmp_path, split="val")
    assert len(read) == 3 and read.class_names == ["face"]
    for i in range(3):
        image, target = read[i]
        torch.testing.assert_close(image, written[i][0], atol=1 / 255 + 1e-6, rtol=0)  # PNG is lossless
        assert target["boxes"].shape == written.boxes[i].shape
        assert torch.equal(target["ignore"], written[i][1]["ignore"])
        assert torch.equal(target["labels"], torch.zeros(len(written.boxes[i]), dtype=torch.int64))
    torch.testing.assert_close(read[0][1]["boxes"], torch.tensor([[1.0, 2.0, 11.0, 14.0], [20.0, 5, 50, 13]]))


def test_synthetic_round_trip_within_half_a_pixel_and_both_splits(tmp_path):
    train = SyntheticShapes(12, image_size=64, num_classes=1, seed=3, empty_fraction=0.3, min_size=6)
    val = SyntheticShapes(5, image_size=64, num_classes=1, seed=4)
    write_widerface(train, tmp_path, split="train", image_format="jpg")
    write_widerface(val, tmp_path, split="val")
    read = _read(tmp_path)
    assert len(read) == 12 and len(_read(tmp_path, split="val")) == 5
    counts = [len(train[i][1]["boxes"]) for i in range(12)]
    assert 0 in counts and max(counts) > 1  # the set has empty images and several faces per image
    for i in range(12):
        expected, got = train[i][1]["boxes"], read[i][1]["boxes"]
        assert got.shape == expected.shape, i
        assert torch.allclose(got, expected, atol=0.5 + 1e-4, rtol=0), i
    entries = parse_wider_gt(str(read.gt_file), str(tmp_path / "WIDER_train" / "images"))
    assert [len(e.boxes) for e in entries] == counts


def test_sequences_get_one_event_folder_each(tmp_path):
    frames = SyntheticShapes(6, image_size=48, num_classes=1, mode="sequence", sequence_length=3)
    write_widerface(frames, tmp_path)
    folders = sorted(p.name for p in (tmp_path / "WIDER_train" / "images").iterdir())
    assert folders == ["0--Sequence", "1--Sequence"]
    assert len(_read(tmp_path)) == 6


def test_other_classes_are_written_as_faces_with_a_counted_warning(tmp_path):
    shapes = SyntheticShapes(6, image_size=48, num_classes=3, seed=1, min_size=6)
    others = sum(int((shapes[i][1]["labels"] != 0).sum()) for i in range(6))
    assert others > 0
    with pytest.warns(UserWarning, match=rf"{others} boxes of classes other than 'circle' written as faces"):
        write_widerface(shapes, tmp_path)
    assert sum(len(t["boxes"]) for _, t in _read(tmp_path)) == sum(len(t["boxes"]) for _, t in shapes)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"split": "test"}, "split must be one of"),
        ({"split": "a/b"}, "plain folder name"),
        ({"event": "Parade"}, "event must look like"),
        ({"event": "0--a/b"}, "event must look like"),
        ({"image_format": "bmp"}, "image_format"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        write_widerface(_Handmade(), tmp_path, **kwargs)
