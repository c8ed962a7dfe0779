"""VOCDataset on a VOC tree and a plain folder, plus its bad-input cases."""

from __future__ import annotations

import warnings

import pytest
import torch

from detforge.data.voc import VOCDataset


def _quiet(root, **kwargs) -> VOCDataset:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return VOCDataset(root, **kwargs)


def test_tree_one_based_corners_and_difficult(make_voc):
    ds = _quiet(make_voc())
    assert len(ds) == 3 and ds.class_names == ["car", "person"]  # collected, sorted
    _, target = ds[0]  # a: person (1, 1, 20, 30), difficult car (30, 10, 60, 40) in a 40 x 60 image
    torch.testing.assert_close(
        target["boxes"], torch.tensor([[0.0, 0.0, 20.0, 30.0], [29.0, 9.0, 60.0, 40.0]])
    )
    assert target["labels"].tolist() == [1, 0]
    assert target["ignore"].tolist() == [False, True]
    assert ds[2][1]["boxes"].shape == (0, 4)


def test_tree_splits_follow_image_sets(make_voc):
    root = make_voc()
    assert len(_quiet(root, split="train")) == 2
    val = _quiet(root, split="val")
    assert len(val) == 1 and val.image_path(0).endswith("c.jpg")


def test_plain_folder_and_given_class_names(make_voc):
    root = make_voc(tree=False)
    with pytest.warns(UserWarning, match="unknown_category"):
        ds = VOCDataset(root, class_names=["car"])
    assert len(ds) == 3 and ds.skipped == {"unknown_category": 1}
    assert ds[0][1]["labels"].tolist() == [0]


def test_xml_without_size_skips_that_image(make_voc):
    def mutate(items):
        items["b"] = (None, items["b"][1])

    with pytest.warns(UserWarning, match=r"(?s)missing_size.*b\.xml.*<size>"):
        ds = VOCDataset(make_voc(mutate=mutate))
    assert len(ds) == 2 and ds.skipped == {"missing_size": 1}


def test_broken_xml_skips_that_image(make_voc):
    with pytest.warns(UserWarning, match=r"(?s)bad_record.*a\.xml.*not well-formed"):
        ds = VOCDataset(make_voc(mutate=lambda items: {"a": "<annotation><size>"}))
    assert len(ds) == 2


@pytest.mark.parametrize(
    ("box", "kind"), [((20, 5, 10, 15), "degenerate_box"), ((100, 100, 120, 120), "outside_box")]
)
def test_bad_box_skipped(make_voc, box, kind):
    def mutate(items):
        items["b"][1].append(("car", box, 0))

    with pytest.warns(UserWarning, match=rf"(?s){kind}.*b\.xml: <object> #1"):
        ds = VOCDataset(make_voc(mutate=mutate))
    assert ds.skipped == {kind: 1} and ds[1][1]["boxes"].shape == (1, 4)


def test_missing_root():
    with pytest.raises(FileNotFoundError, match="nowhere"):
        VOCDataset("nowhere")
