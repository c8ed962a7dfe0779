import torch

from detforge.targets import image_sizes_of, pad_targets


def _t(n, crowd=None):
    t = {"boxes": torch.rand(n, 4) * 10 + torch.tensor([0, 0, 10, 10.0]), "labels": torch.arange(n)}
    if crowd is not None:
        t["iscrowd"] = torch.tensor(crowd, dtype=torch.bool)
    return t


def test_pad_targets_mixed_counts_and_crowd():
    targets = [_t(0), _t(3, crowd=[False, True, False]), _t(1)]
    boxes, labels, mask = pad_targets(targets)
    assert boxes.shape == (3, 2, 4) and labels.shape == (3, 2) and mask.shape == (3, 2)
    assert mask.tolist() == [[False, False], [True, True], [True, False]]
    assert labels[1].tolist() == [0, 2]
    assert torch.equal(boxes[1, 1], targets[1]["boxes"][2])
    assert (labels[~mask] == -1).all()


def test_pad_targets_all_empty():
    boxes, labels, mask = pad_targets([_t(0), _t(0)])
    assert boxes.shape == (2, 0, 4) and mask.shape == (2, 0)


def test_image_sizes_of():
    images = torch.zeros(2, 3, 64, 80)
    assert image_sizes_of([{"size": torch.tensor([60, 70])}, {}], images) == [(60, 70), (64, 80)]


def test_to_original_size_matches_scale_boxes():
    from detforge.boxes import scale_boxes
    from detforge.targets import metric_targets, to_original_size

    boxes = torch.tensor([[10.0, 20.0, 50.0, 60.0], [0.0, 0.0, 64.0, 48.0]])
    t = {
        "boxes": boxes,
        "labels": torch.tensor([0, 1]),
        "size": torch.tensor([48, 64]),
        "orig_size": torch.tensor([300, 400]),
    }
    out = to_original_size([{"boxes": boxes, "scores": torch.ones(2)}], [t])[0]
    torch.testing.assert_close(out["boxes"], scale_boxes(boxes, (48, 64), (300, 400)))
    assert torch.equal(out["scores"], torch.ones(2))
    t["area"] = torch.tensor([1600.0, 3072.0])
    gt = metric_targets([t])[0]
    torch.testing.assert_close(gt["boxes"], scale_boxes(boxes, (48, 64), (300, 400)))
    torch.testing.assert_close(gt["area"], t["area"] * (300 / 48) * (400 / 64))


def test_check_target_boxes_inverted_names_image_and_box():
    import pytest

    from detforge.targets import check_target_boxes

    good = {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "labels": torch.tensor([0])}
    bad = {"boxes": torch.tensor([[1.0, 1.0, 5.0, 5.0], [20.0, 5.0, 10.0, 30.0]]), "labels": torch.tensor([0, 1])}
    with pytest.raises(ValueError, match=r"image 1 of the batch .*\[20\.0, 5\.0, 10\.0, 30\.0\]"):
        check_target_boxes([good, bad])
    with pytest.raises(ValueError, match="image_id 42 has an inverted box"):
        check_target_boxes([good, dict(bad, image_id=torch.tensor(42))])


def test_check_target_boxes_normalized_warns_once_with_count(recwarn):
    import pytest

    from detforge.targets import check_target_boxes

    norm = {"boxes": torch.tensor([[0.1, 0.2, 0.5, 0.9]]), "labels": torch.tensor([0])}
    pixels = {"boxes": torch.tensor([[0.0, 0.0, 1.0, 1.0], [3.0, 4.0, 60.0, 50.0]]), "labels": torch.tensor([0, 0])}
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    with pytest.warns(UserWarning, match=r"2 of 4 image\(s\).*first: image_id 7.*scale_boxes") as record:
        check_target_boxes([pixels, dict(norm, image_id=7), empty, norm], (64, 96))
    assert len(record) == 1
    # border / degenerate / empty pixel boxes and tiny images stay silent
    check_target_boxes([pixels, empty, {"boxes": torch.tensor([[0.0, 0.0, 96.0, 64.0]]), "labels": torch.tensor([0])}])
    check_target_boxes([norm], (16, 16))
    check_target_boxes([dict(norm, size=torch.tensor([12, 10]))])
    check_target_boxes([])
    assert not recwarn.list
