import numpy as np
import pytest
import torch

from detforge.models.edge import Phantom
from detforge.models.edge.phantom_video import PhantomVideo, decode_face_maps, merge_crops, torch_network


def _scene(h=64, w=64, seed=0):
    return np.random.default_rng(seed).uniform(0.2, 0.4, (3, h, w)).astype(np.float32)


def _moving(n, h=64, w=64, tops=(20,)):
    """Frames [3, h, w] with a 12 x 12 square per entry of ``tops`` (its first row), moving 2 px a frame."""
    background = _scene(h, w)
    frames = []
    for i in range(n):
        f = background.copy()
        for top in tops:
            f[:, top : top + 12, 4 + 2 * i : 16 + 2 * i] = 0.9
        frames.append(f)
    return frames


def _counting_network(net):
    calls = []
    run = torch_network(net)

    def counted(x):
        calls.append(x.shape[-2:])
        return run(x)

    return counted, calls


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Phantom()


def test_static_scene_runs_no_network_after_first_frame(model):
    network, calls = _counting_network(model.net)
    video = PhantomVideo(network, memory=model.memory, refresh_interval=30)
    frame = _scene()
    for _ in range(5):
        video.infer(frame)
    assert video.profile.modes == ["full", "skip", "skip", "skip", "skip"]
    assert video.profile.fractions == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert len(calls) == 1


def test_moving_object_processes_only_its_region(model):
    network, calls = _counting_network(model.net)
    video = PhantomVideo(network, memory=model.memory, refresh_interval=30)
    for frame in _moving(4):
        video.infer(frame)
    assert video.profile.modes[0] == "full"
    assert video.profile.modes[1:] == ["sparse"] * 3
    assert all(0 < f < 0.6 for f in video.profile.fractions[1:])
    assert all(tuple(c) != (64, 64) for c in calls[1:])


def _cell_mean_network(x):
    """A strictly local stand-in network: each stride-4 cell's output is the mean of its 4 x 4 pixels."""
    b, c, h, w = x.shape
    cells = x.reshape(b, c, h // 4, 4, w // 4, 4).mean(axis=(1, 3, 5))[:, None]  # [B, 1, h/4, w/4]
    return cells, np.repeat(cells, 4, axis=1)


def _block_network(x):
    """A local stand-in with PhantomNet's total stride 8: each stride-4 cell's output is the mean of its 4 x 4
    pixels plus the mean of the 8 x 8 block (zero-padded past the border) that holds it."""
    b, c, h, w = x.shape
    padded = np.zeros((b, c, -(-h // 8) * 8, -(-w // 8) * 8), np.float32)
    padded[..., :h, :w] = x
    blocks = padded.reshape(b, c, padded.shape[2] // 8, 8, padded.shape[3] // 8, 8).mean(axis=(1, 3, 5))
    coarse = blocks.repeat(2, axis=1).repeat(2, axis=2)[:, : h // 4, : w // 4]  # [B, h/4, w/4]
    fine = x.reshape(b, c, h // 4, 4, w // 4, 4).mean(axis=(1, 3, 5))  # [B, h/4, w/4]
    cells = (coarse + fine)[:, None]  # [B, 1, h/4, w/4]
    return cells, np.repeat(cells, 4, axis=1)


def _sparse_then_full(network, frames, **kwargs):
    video = PhantomVideo(network, memory=None, refresh_interval=30, min_tile_events=1, **kwargs)
    for f in frames:
        video.infer(f)
    assert "sparse" in video.profile.modes
    full_cls, full_deltas = network(frames[-1][None])
    return video, full_cls[0], full_deltas[0]


@pytest.mark.parametrize(
    ("network", "h", "w", "halo", "tops"),
    [
        (_cell_mean_network, 64, 48, 0, (20,)),
        (_cell_mean_network, 64, 48, 8, (20,)),
        (_cell_mean_network, 96, 96, 16, (20, 70)),
        (_block_network, 64, 48, 0, (20,)),
        (_block_network, 64, 48, 8, (20,)),
        (_block_network, 60, 44, 8, (6, 48)),  # not multiples of 8: crops end on the frame border
        (_block_network, 96, 96, 16, (20, 70)),
    ],
)
def test_sparse_cache_equals_full_recompute_for_a_local_network(network, h, w, halo, tops):
    """Crop, run and paste must put every recomputed cell exactly where the full frame has it."""
    frames = _moving(6, h=h, w=w, tops=tops)
    align = 8 if network is _block_network else 4  # the stand-in's total stride
    video, full_cls, full_deltas = _sparse_then_full(network, frames, halo=halo, tile=8, align=align)
    np.testing.assert_allclose(video.cls, full_cls, atol=1e-6)
    np.testing.assert_allclose(video.deltas, full_deltas, atol=1e-6)


def test_crops_off_the_stride_8_grid_would_break_the_cache():
    """The exactness above needs crops aligned to the network's total stride: aligned to 4 only, a stride-8
    network sees other blocks and the cache goes wrong (so the test above can fail)."""
    frames = _moving(6, h=64, w=48)
    video, full_cls, _ = _sparse_then_full(_block_network, frames, halo=4, tile=4, align=4)
    assert np.abs(video.cls - full_cls).max() > 1e-3


def test_crop_sizes_must_follow_the_alignment():
    with pytest.raises(ValueError, match="multiples of align"):
        PhantomVideo(_cell_mean_network, memory=None, tile=8, halo=4, align=8)
    with pytest.raises(ValueError, match="multiples of align"):
        PhantomVideo(_cell_mean_network, memory=None, tile=4, halo=8, align=8)
    with pytest.raises(ValueError, match="align"):
        PhantomVideo(_cell_mean_network, memory=None, align=6)


def test_separate_objects_get_separate_crops_and_close_ones_one():
    far, far_calls = _counting_network(Phantom().net)
    video = PhantomVideo(far, memory=None)
    for f in _moving(3, h=128, w=128, tops=(10, 90)):
        video.infer(f)
    assert video.profile.modes == ["full", "sparse", "sparse"]
    assert len(far_calls) == 1 + 2 * 2  # two crops a frame
    assert all(f < 0.4 for f in video.profile.fractions[1:])
    near, near_calls = _counting_network(Phantom().net)
    video = PhantomVideo(near, memory=None)
    for f in _moving(3, h=128, w=128, tops=(10, 30)):  # 8 rows apart: the crops overlap and merge
        video.infer(f)
    assert len(near_calls) == 1 + 2


def test_sensor_noise_below_the_threshold_wakes_nothing():
    rng = np.random.default_rng(1)
    frame = _scene()
    video = PhantomVideo(_cell_mean_network, memory=None)
    for _ in range(4):
        video.infer(np.clip(frame + rng.normal(0, 0.02, frame.shape), 0, 1).astype(np.float32))
    assert video.profile.modes == ["full", "skip", "skip", "skip"]


def _brute_force_mergeable(crops, call_cost):
    area = lambda c: (c[1] - c[0]) * (c[3] - c[2])  # noqa: E731
    for i, a in enumerate(crops):
        for b in crops[i + 1 :]:
            union = (min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3]))
            if area(union) <= area(a) + area(b) + call_cost:
                return True
    return False


@pytest.mark.parametrize("call_cost", [0, 256])
@pytest.mark.parametrize("seed", range(5))
def test_merge_crops_covers_every_crop_and_leaves_no_profitable_merge(seed, call_cost):
    rng = np.random.default_rng(seed)
    crops = []
    for _ in range(int(rng.integers(0, 9))):
        y0, x0 = (int(v) for v in rng.integers(0, 12, 2) * 8)
        crops.append((y0, y0 + int(rng.integers(1, 5)) * 8, x0, x0 + int(rng.integers(1, 5)) * 8))
    merged = merge_crops(crops, call_cost)
    area = lambda c: (c[1] - c[0]) * (c[3] - c[2])  # noqa: E731
    for y0, y1, x0, x1 in crops:
        assert any(m[0] <= y0 and y1 <= m[1] and m[2] <= x0 and x1 <= m[3] for m in merged)
    assert sum(area(c) + call_cost for c in merged) <= sum(area(c) + call_cost for c in crops)
    assert not _brute_force_mergeable(merged, call_cost)
    assert merge_crops([]) == []


def test_refresh_interval_forces_full_frames(model):
    video = PhantomVideo(torch_network(model.net), memory=None, refresh_interval=3)
    for frame in _moving(7):
        video.infer(frame)
    assert [m == "full" for m in video.profile.modes] == [True, False, False, True, False, False, True]


def test_track_frame_tracks_and_reset(model):
    m = Phantom(detection_threshold=0.5)
    m.load_state_dict(model.state_dict())
    torch.nn.init.constant_(m.net.cls_out.bias, 3.0)  # every cell says "face": detections guaranteed
    frames = _moving(3)
    out = [m.track_frame(torch.from_numpy(f)) for f in frames]
    assert all(len(o["boxes"]) for o in out)
    assert {"boxes", "scores", "labels", "track_ids", "detection_indices"} <= set(out[0])
    assert out[0]["track_ids"].dtype == torch.int64 and (out[0]["labels"] == 0).all()
    assert (out[0]["scores"] >= 0.5).all()  # accumulated track confidence, reported from detection_threshold
    ids = [set(o["track_ids"].tolist()) for o in out]
    assert ids[0] & ids[1] & ids[2]  # some faces keep their id across frames
    assert m.video.frame_index == 3
    m.reset()
    assert m.video is None


def test_decode_face_maps_threshold_and_nms():
    cls = np.full((1, 4, 4), -10.0, np.float32)
    cls[0, 1, 1], cls[0, 1, 2], cls[0, 3, 3] = 4.0, 3.0, 2.0
    deltas = np.zeros((4, 4, 4), np.float32)
    deltas[2:] = np.log(2.0)  # 8 x 8 pixel boxes
    boxes, scores = decode_face_maps(cls, deltas, stride=4, score_thresh=0.5, nms_thresh=0.3)
    assert len(boxes) == 2  # cell (1, 2)'s box overlaps cell (1, 1)'s by IoU 1/3 > 0.3: suppressed
    np.testing.assert_allclose(boxes, [[0.0, 0.0, 8.0, 8.0], [8.0, 8.0, 16.0, 16.0]])
    assert scores[0] == pytest.approx(1 / (1 + np.exp(-4.0)))


def test_bad_frame_size_is_a_clear_error(model):
    video = PhantomVideo(torch_network(model.net), memory=None)
    with pytest.raises(ValueError, match="divisible by 4"):
        video.infer(np.zeros((3, 30, 32), np.float32))


def test_decode_face_maps_keeps_local_maxima_only():
    """Decoding = the shared detect on the 3 x 3 local maxima of the map: a reference loop over cells finds the
    same peaks, and a map above the threshold everywhere decodes to its peaks, not to every cell."""
    rng = np.random.default_rng(0)
    cls = rng.normal(0.0, 1.0, (1, 8, 8)).astype(np.float32)  # untrained-looking: ~all cells above 0.25
    deltas = np.zeros((4, 8, 8), np.float32)
    deltas[2:] = np.log(0.5)  # 2 x 2 pixel boxes at stride 4: no two boxes overlap, NMS removes nothing
    boxes, scores = decode_face_maps(cls, deltas, stride=4, score_thresh=0.25, nms_thresh=0.3)
    m = cls[0]
    peaks = [
        (r, c)
        for r in range(8)
        for c in range(8)
        if m[r, c] >= m[max(r - 1, 0) : r + 2, max(c - 1, 0) : c + 2].max()
        and 1 / (1 + np.exp(-m[r, c])) > 0.25
    ]
    assert 0 < len(peaks) < 64 // 2
    expected = sorted((4 * c - 1.0, 4 * r - 1.0) for r, c in peaks)  # box of cell (r, c): centre (4c, 4r)
    got = sorted((float(x1), float(y1)) for x1, y1, _, _ in boxes)
    np.testing.assert_allclose(np.clip(expected, 0, None), got, atol=1e-5)
    assert np.all(np.diff(scores) <= 0)
