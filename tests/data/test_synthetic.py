import numpy as np
import pytest
import torch
from matplotlib.path import Path as MplPath

from detforge.data import synthetic as synthetic_module
from detforge.data.synthetic import _STAR, _TRIANGLE, SHAPE_NAMES, SyntheticShapes, _point_in_polygon

KEYS = {"boxes", "labels", "image_id", "orig_size", "size", "iscrowd", "ignore", "area"}


def _check_target(target, height, width, num_classes):
    assert set(target) >= KEYS
    boxes, n = target["boxes"], target["boxes"].shape[0]
    assert boxes.dtype == torch.float32 and boxes.shape == (n, 4)
    assert target["labels"].dtype == torch.int64 and target["labels"].shape == (n,)
    assert target["iscrowd"].dtype == torch.bool and target["ignore"].dtype == torch.bool
    assert target["area"].dtype == torch.float32 and target["area"].shape == (n,)
    assert torch.all(boxes[:, 0] >= 0) and torch.all(boxes[:, 2] <= width)
    assert torch.all(boxes[:, 1] >= 0) and torch.all(boxes[:, 3] <= height)
    assert torch.all(boxes[:, 2] > boxes[:, 0]) and torch.all(boxes[:, 3] > boxes[:, 1])
    assert torch.all((target["labels"] >= 0) & (target["labels"] < num_classes))
    # Visible pixels fit inside their box.
    box_area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    assert torch.all(target["area"] <= box_area) and torch.all(target["area"] > 0)


@pytest.mark.parametrize("mode", ["rgb", "thermal", "sequence"])
def test_sample_contract_and_determinism(mode):
    ds = SyntheticShapes(
        12, image_size=(64, 96), num_classes=8, seed=3, mode=mode, sequence_length=4, min_size=6
    )
    channels = 1 if mode == "thermal" else 3
    assert len(ds) == 12 and ds.num_classes == 8 and ds.class_names == list(SHAPE_NAMES)
    samples = [ds[i] for i in range(len(ds))]
    for i, (image, target) in enumerate(samples):
        assert image.shape == (channels, 64, 96) and image.dtype == torch.float32
        assert image.min() >= 0.0 and image.max() <= 1.0
        assert target["image_id"] == i
        assert target["size"].tolist() == [64, 96] and target["orig_size"].tolist() == [64, 96]
        _check_target(target, 64, 96, 8)
    # Random access in another order, in a fresh instance, gives the same pixels and boxes.
    again = SyntheticShapes(
        12, image_size=(64, 96), num_classes=8, seed=3, mode=mode, sequence_length=4, min_size=6
    )
    for i in (7, 2, 11, 0):
        image, target = again[i]
        assert torch.equal(image, samples[i][0])
        assert torch.equal(target["boxes"], samples[i][1]["boxes"])
        assert torch.equal(target["labels"], samples[i][1]["labels"])
    other = SyntheticShapes(
        12, image_size=(64, 96), num_classes=8, seed=4, mode=mode, sequence_length=4, min_size=6
    )
    assert not all(torch.equal(other[i][0], samples[i][0]) for i in range(4))


def test_rgb_boxes_are_tight_around_visible_pixels(monkeypatch):
    """Reference: render the same sample with painting switched off; the shape is where the pixels differ."""
    ds = SyntheticShapes(
        30, image_size=80, num_classes=8, max_objects=1, empty_fraction=0.0, noise=0.0, min_size=6
    )
    with_shapes = [ds.render(i) for i in range(len(ds))]
    monkeypatch.setattr(SyntheticShapes, "_paint", lambda *args: None)
    for i, (image, target) in enumerate(with_shapes):
        background, _ = ds.render(i)
        changed = (image != background).any(dim=0)  # [H, W]
        ys, xs = torch.nonzero(changed, as_tuple=True)
        assert target["boxes"].shape == (1, 4)
        expected = torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32)
        assert torch.equal(target["boxes"], expected), i
        assert target["area"].item() == changed.sum().item()


def test_polygon_membership_matches_matplotlib():
    rng = np.random.default_rng(0)
    pts = rng.uniform(-1.2, 1.2, size=(2000, 2))
    for poly in (_STAR, _TRIANGLE):
        ours = _point_in_polygon(pts[:, 0], pts[:, 1], poly)
        reference = MplPath(poly).contains_points(pts)
        assert (ours == reference).mean() > 0.999  # points exactly on an edge may differ


def test_empty_fraction_and_occlusion_limits():
    empty = SyntheticShapes(5, image_size=48, empty_fraction=1.0, min_size=6)
    for i in range(5):
        image, target = empty[i]
        assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    ds = SyntheticShapes(40, image_size=96, max_objects=8, max_occlusion=0.3, min_size=8)
    counts = [len(ds[i][1]["labels"]) for i in range(len(ds))]
    assert sum(c == 0 for c in counts) >= 1 and max(counts) >= 3
    # rgb mode re-places shapes instead of hiding them, so every box is a training target
    assert not any(ds[i][1]["ignore"].any() for i in range(len(ds)))


def test_sequence_tracks_move_smoothly_and_static_sequences_stand_still():
    ds = SyntheticShapes(
        12, image_size=96, mode="sequence", sequence_length=6, max_objects=1, empty_fraction=0.0
    )
    targets = [ds[i][1] for i in range(12)]
    assert [t["frame_index"] for t in targets] == [0, 1, 2, 3, 4, 5] * 2
    assert [t["sequence_id"] for t in targets] == [0] * 6 + [1] * 6
    for t in targets:
        assert t["track_ids"].dtype == torch.int64 and t["track_ids"].shape == t["labels"].shape
    for first, second in zip(targets[:5], targets[1:6]):
        assert torch.equal(first["track_ids"], second["track_ids"]) and torch.equal(
            first["labels"], second["labels"]
        )
        centre = lambda b: (b[:, :2] + b[:, 2:]) / 2  # noqa: E731
        assert (centre(first["boxes"]) - centre(second["boxes"])).abs().max() <= 3.0 * 1.42 + 1.5
    assert set(targets[0]["track_ids"].tolist()).isdisjoint(targets[6]["track_ids"].tolist())
    static = SyntheticShapes(
        4, image_size=64, mode="sequence", sequence_length=4, motion=0.0, empty_fraction=0.0
    )
    first_boxes = static[0][1]["boxes"]
    for i in range(1, 4):
        assert torch.equal(static[i][1]["boxes"], first_boxes)


def test_sequence_marks_heavily_hidden_tracks_ignore():
    ds = SyntheticShapes(
        60, image_size=64, mode="sequence", sequence_length=30, max_objects=8, max_occlusion=0.2
    )
    flags = torch.cat([ds[i][1]["ignore"] for i in range(len(ds))])
    assert flags.any() and not flags.all()


def test_transforms_get_uint8_and_imgsz_resizes():
    seen = {}

    def spy(image, target):
        seen["dtype"] = image.dtype
        return image.float() / 255, target

    ds = SyntheticShapes(3, image_size=64, transforms=spy, empty_fraction=0.0, min_size=8)
    ds[0]
    assert seen["dtype"] == torch.uint8
    base = SyntheticShapes(3, image_size=64, empty_fraction=0.0, min_size=8)
    resized = SyntheticShapes(3, image_size=64, empty_fraction=0.0, min_size=8, imgsz=(32, 128))
    image, target = resized[1]
    assert image.shape == (3, 32, 128) and target["size"].tolist() == [32, 128]
    assert target["orig_size"].tolist() == [64, 64]
    expected = base[1][1]["boxes"] * torch.tensor([2.0, 0.5, 2.0, 0.5])
    torch.testing.assert_close(target["boxes"], expected)


def test_bad_arguments_raise_value_errors():
    with pytest.raises(ValueError, match="num_classes"):
        SyntheticShapes(4, num_classes=len(SHAPE_NAMES) + 1)
    with pytest.raises(ValueError, match="mode must be one of"):
        SyntheticShapes(4, mode="depth")
    with pytest.raises(ValueError, match="min_size"):
        SyntheticShapes(4, image_size=32, min_size=40)
    with pytest.raises(IndexError):
        SyntheticShapes(4).render(4)


def test_module_has_no_global_rng_use(monkeypatch):
    """Sample i depends on (seed, i) only: reseeding numpy's and torch's global generators changes nothing."""
    ds = SyntheticShapes(3, image_size=48, min_size=6)
    np.random.seed(1)
    torch.manual_seed(1)
    a = ds[2]
    np.random.seed(2)
    torch.manual_seed(2)
    b = ds[2]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1]["boxes"], b[1]["boxes"])
    assert synthetic_module.SHAPE_NAMES[:5] == ("circle", "rectangle", "triangle", "ellipse", "star")


@pytest.mark.parametrize("mode", ["rgb", "sequence"])
def test_render_cache_returns_the_same_samples_and_independent_copies(mode):
    plain = SyntheticShapes(6, image_size=48, min_size=6, seed=3, mode=mode, sequence_length=3)
    cached = SyntheticShapes(6, image_size=48, min_size=6, seed=3, mode=mode, sequence_length=3, cache=True)
    for i in (4, 0, 4, 5, 0):
        image, target = cached[i]
        ref_image, ref_target = plain[i]
        assert torch.equal(image, ref_image)
        assert target.keys() == ref_target.keys()
        for key, value in ref_target.items():
            assert torch.equal(torch.as_tensor(target[key]), torch.as_tensor(value)), key
        image.zero_()  # a caller editing its copy must not change what the cache hands out next
        target["boxes"].zero_()
    assert sorted(cached._renders) == [0, 4, 5]
    assert torch.equal(cached[4][0], plain[4][0])
    assert torch.equal(cached[4][1]["boxes"], plain[4][1]["boxes"])
