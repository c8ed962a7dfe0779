import numpy as np
import pytest
import torch

from detforge.models.edge import Phantom
from detforge.models.edge.phantom_video import PhantomVideo, decode_face_maps, torch_network


def _scene(h=64, w=64, seed=0):
    return np.random.default_rng(seed).uniform(0.2, 0.4, (3, h, w)).astype(np.float32)


def _moving(n, h=64, w=64):
    background = _scene(h, w)
    frames = []
    for i in range(n):
        f = background.copy()
        f[:, 20:32, 4 + 2 * i : 16 + 2 * i] = 0.9
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


@pytest.mark.parametrize(("h", "w", "halo"), [(64, 48, 0), (64, 48, 4), (96, 96, 16)])
def test_sparse_cache_equals_full_recompute_for_a_local_network(h, w, halo):
    """Crop, run and paste must put every recomputed cell exactly where the full frame has it."""
    frames = _moving(6, h=h, w=w)
    video = PhantomVideo(_cell_mean_network, memory=None, refresh_interval=30, halo=halo, tile=8)
    for f in frames:
        video.infer(f)
    assert "sparse" in video.profile.modes
    full_cls, full_deltas = _cell_mean_network(frames[-1][None])
    np.testing.assert_allclose(video.cls, full_cls[0], atol=1e-6)
    np.testing.assert_allclose(video.deltas, full_deltas[0], atol=1e-6)


def test_refresh_interval_forces_full_frames(model):
    video = PhantomVideo(torch_network(model.net), memory=None, refresh_interval=3)
    for frame in _moving(7):
        video.infer(frame)
    assert [m == "full" for m in video.profile.modes] == [True, False, False, True, False, False, True]


def test_detect_frame_tracks_and_reset(model):
    m = Phantom(detection_threshold=0.5)
    m.load_state_dict(model.state_dict())
    torch.nn.init.constant_(m.net.cls_out.bias, 3.0)  # every cell says "face": detections guaranteed
    frames = _moving(3)
    out = [m.detect_frame(torch.from_numpy(f)) for f in frames]
    assert all(out) and {"bbox", "confidence", "track_id"} <= set(out[0][0])
    ids = [{d["track_id"] for d in faces} for faces in out]
    assert ids[0] & ids[1] & ids[2]  # some faces keep their id across frames
    assert m.video.frame_index == 3
    m.reset()
    assert m.video is None


def test_decode_face_maps_threshold_and_nms():
    cls = np.full((1, 4, 4), -10.0, np.float32)
    cls[0, 1, 1], cls[0, 1, 2], cls[0, 3, 3] = 4.0, 3.0, 2.0
    deltas = np.zeros((4, 4, 4), np.float32)
    deltas[2:] = np.log(2.0)  # 8 x 8 pixel boxes
    boxes, scores = decode_face_maps(cls, deltas, stride=4, score_threshold=0.5, nms_threshold=0.3)
    assert len(boxes) == 2  # cell (1, 2)'s box overlaps cell (1, 1)'s by IoU 1/3 > 0.3: suppressed
    np.testing.assert_allclose(boxes, [[0.0, 0.0, 8.0, 8.0], [8.0, 8.0, 16.0, 16.0]])
    assert scores[0] == pytest.approx(1 / (1 + np.exp(-4.0)))


def test_bad_frame_size_is_a_clear_error(model):
    video = PhantomVideo(torch_network(model.net), memory=None)
    with pytest.raises(ValueError, match="divisible by 4"):
        video.infer(np.zeros((3, 30, 32), np.float32))
