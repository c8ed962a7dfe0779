"""WiderFaceDataset: the ground-truth format, the zero-face quirk, invalid faces, count mismatches."""

from __future__ import annotations

import warnings

import pytest
import torch

from detforge.data.widerface import WiderFaceDataset


def _quiet(root, **kwargs) -> WiderFaceDataset:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return WiderFaceDataset(root, **kwargs)


def test_parses_faces_and_zero_face_entry(make_wider):
    ds = _quiet(make_wider())
    assert len(ds) == 3 and ds.class_names == ["face"]
    image, boxes = ds.get(0)
    assert image.shape == (3, 40, 50)
    torch.testing.assert_close(boxes, torch.tensor([[1.0, 2.0, 11.0, 14.0], [20.0, 5.0, 28.0, 13.0]]))
    assert ds[0][1]["ignore"].tolist() == [False, True]  # second face is invalid
    assert ds[1][1]["boxes"].shape == (0, 4)  # count 0 + the all-zero line
    entry = ds.get_annotation(2)
    assert entry.image_path.endswith("1--Handshaking/1_c.jpg")
    assert entry.blur.tolist() == [2] and entry.pose.tolist() == [1] and entry.occlusion.tolist() == [2]
    torch.testing.assert_close(ds[2][1]["boxes"], torch.tensor([[0.0, 0.0, 30.0, 40.0]]))  # border box


def test_get_scales_to_imgsz(make_wider):
    _, boxes = _quiet(make_wider(), imgsz=(20, 25)).get(0)
    torch.testing.assert_close(boxes[0], torch.tensor([0.5, 1.0, 5.5, 7.0]))


def test_split_val(make_wider):
    assert len(_quiet(make_wider(split="val"), split="val")) == 3


def test_zero_face_without_the_zero_line_is_tolerated(make_wider):
    gt = "0--Parade/0_b.jpg\n0\n0--Parade/0_a.jpg\n1\n1 2 10 12 0 0 0 0 0 0\n"
    ds = _quiet(make_wider(gt=gt))
    assert [len(ds[i][1]["boxes"]) for i in range(2)] == [0, 1]


@pytest.mark.parametrize(
    ("gt", "match"),
    [
        (
            "0--Parade/0_a.jpg\n3\n1 2 10 12 0 0 0 0 0 0\n0--Parade/0_b.jpg\n0\n0 0 0 0 0 0 0 0 0 0\n",
            r"_bbx_gt\.txt:4.*says 3",
        ),
        (
            "0--Parade/0_a.jpg\n1\n1 2 10 12 0 0 0 0 0 0\n20 5 8 8 1 1 0 1 0 0\n",
            r"_bbx_gt\.txt:4.*fewer faces",
        ),
        ("0--Parade/0_a.jpg\ntwo\n", r"_bbx_gt\.txt:2.*face count"),
    ],
)
def test_count_mismatch_is_an_error_naming_the_line(make_wider, gt, match):
    with pytest.raises(ValueError, match=match):
        WiderFaceDataset(make_wider(gt=gt))


def test_zero_size_face_skipped_with_warning(make_wider):
    gt = "0--Parade/0_a.jpg\n2\n1 2 0 12 0 0 0 0 0 0\n20 5 8 8 0 0 0 0 0 0\n"
    with pytest.warns(UserWarning, match=r"(?s)degenerate_box.*_bbx_gt\.txt:3"):
        ds = WiderFaceDataset(make_wider(gt=gt))
    assert ds[0][1]["boxes"].shape == (1, 4) and ds.get_annotation(0).blur.shape == (1,)


def test_missing_image_skipped(make_wider):
    root = make_wider()
    (root / "WIDER_train" / "images" / "0--Parade" / "0_b.jpg").unlink()
    with pytest.warns(UserWarning, match=r"missing_image.*_bbx_gt\.txt:5"):
        ds = WiderFaceDataset(root)
    assert len(ds) == 2


def test_bad_split():
    with pytest.raises(ValueError, match="'train', 'val'"):
        WiderFaceDataset(".", split="test")


def test_normalized_looking_faces_flagged(make_wider):
    gt = "0--Parade/0_a.jpg\n1\n0.1 0.2 0.3 0.3 0 0 0 0 0 0\n"
    with pytest.warns(UserWarning, match="normalized_coords"):
        WiderFaceDataset(make_wider(gt=gt))
