"""``detforge.tracking.track``: the Python entry point gives the same tracks as ``detforge track`` on the same
video, for a checkpoint and for a bare registered model."""

import numpy as np
import pytest
import torch

from detforge.cli import main as cli_main
from detforge.data.mot import read_mot_txt
from detforge.errors import InvalidValueError
from detforge.tracking import track
from detforge.tracking.video import AnnotatedVideoWriter

OPTIONS = {"minimum_score": 0.0, "track_activation_threshold": 0.0}  # the tiny model is untrained


@pytest.fixture
def video(tmp_path):
    rng = np.random.default_rng(0)
    background = rng.integers(0, 60, (64, 96, 3), dtype=np.uint8)
    path = tmp_path / "clip.avi"
    with AnnotatedVideoWriter(path, 10, (64, 96)) as writer:
        for i in range(10):
            frame = background.copy()
            frame[10:30, 4 + 3 * i : 24 + 3 * i] = (240, 60, 60)
            writer.write(frame)
    return path


def test_python_track_equals_the_cli(tiny_checkpoint, video, tmp_path):
    from detforge.engine.validate import load_detector

    detector = load_detector(tiny_checkpoint, "cpu")
    got = {n: t for n, _, t in track(detector, str(video), conf=0.0, batch=4, **OPTIONS)}
    argv = ["track", "--ckpt", str(tiny_checkpoint), str(video), "--conf", "0", "--batch", "4", "--no-draw"]
    for name, value in OPTIONS.items():
        argv += ["--tracker-option", f"{name}={value}"]
    assert cli_main([*argv, "--out", str(tmp_path / "cli"), "--device", "cpu"]) == 0
    cli = read_mot_txt(tmp_path / "cli" / "clip.txt")
    assert sorted(got) == list(range(1, 11)) and any(len(t["track_ids"]) for t in got.values())
    for number, tracks in got.items():
        if not len(tracks["track_ids"]):
            assert number not in cli
            continue
        mine = sorted(zip(tracks["track_ids"].tolist(), tracks["boxes"].round(decimals=2).tolist()))
        theirs = sorted(
            zip(cli[number]["track_ids"].tolist(), cli[number]["boxes"].round(decimals=2).tolist())
        )
        assert [i for i, _ in mine] == [i for i, _ in theirs]
        torch.testing.assert_close(
            torch.tensor([b for _, b in mine]), torch.tensor([b for _, b in theirs]), atol=0.02, rtol=0
        )


def test_python_track_takes_a_bare_model(tiny_detector, video):
    model = tiny_detector().model.eval()
    frames = list(track(model, str(video), conf=0.0, **OPTIONS))
    assert [n for n, _, _ in frames] == list(range(1, 11))
    assert all(f.shape == (64, 96, 3) and t["track_ids"].dtype == torch.int64 for _, f, t in frames)


def test_python_track_refuses_what_is_not_a_detector(video):
    with pytest.raises(InvalidValueError, match="not a detforge detector"):
        next(track(object(), str(video)))


def test_a_stream_url_runs_one_frame_at_a_time(tiny_checkpoint, video, tmp_path, capsys):
    """``file://`` goes through FFmpeg's URL reader, as ``rtsp://`` and ``http://`` do: a live source."""
    out = tmp_path / "out"
    argv = ["track", "--ckpt", str(tiny_checkpoint), f"file://{video}", "--no-draw", "--out", str(out)]
    assert cli_main([*argv, "--device", "cpu"]) == 0
    assert "10 frames" in capsys.readouterr().err
    (txt,) = out.glob("*.txt")
    assert txt.name.endswith("clip.avi.txt")
