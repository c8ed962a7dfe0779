"""Video sources and the annotated-video writer (``detforge.tracking.video``): files, frame folders, broken
files named with their last good frame, writes that stay playable."""

import numpy as np
import pytest
import torch

from detforge.errors import DataError, MissingFileError
from detforge.tracking.video import (
    AnnotatedVideoWriter,
    draw_tracks,
    is_video_source,
    open_video_source,
)


def _frames(n: int, h: int = 48, w: int = 64) -> list[np.ndarray]:
    """Frames with a bright square moving right over a dark background (RGB [H, W, 3] uint8)."""
    out = []
    for i in range(n):
        frame = np.full((h, w, 3), 20, np.uint8)
        frame[10:26, 2 + 2 * i : 18 + 2 * i] = (250, 200, 40)
        out.append(frame)
    return out


def _write(path, frames, fps=12.0):
    with AnnotatedVideoWriter(path, fps, frames[0].shape[:2]) as writer:
        for frame in frames:
            writer.write(frame)
    return path


@pytest.mark.parametrize("suffix", [".mp4", ".avi"])
def test_written_video_reads_back_with_its_frames_and_rate(tmp_path, suffix):
    frames = _frames(12)
    path = _write(tmp_path / f"clip{suffix}", frames)
    assert not list(tmp_path.glob(".*partial*")), "the temporary name is renamed on close"
    source = open_video_source(str(path))
    assert (source.kind, source.name, source.num_frames, source.fps) == ("video", "clip", 12, 12.0)
    got = list(source)
    assert len(got) == 12 and source.stopped_early is None
    for a, b in zip(got, frames, strict=True):
        assert a.shape == b.shape and a.dtype == np.uint8
        assert np.abs(a.astype(int) - b.astype(int)).mean() < 12, "lossy codec, but the same picture"
    # the square moves: decoded frames are in order and RGB (red channel brightest in the square)
    assert got[0][18, 10, 0] > got[0][18, 10, 2] and got[-1][18, 10].max() < 80


def test_truncated_video_stops_at_its_last_good_frame(tmp_path):
    path = _write(tmp_path / "clip.avi", _frames(30))  # MJPG in AVI: the header comes first
    data = path.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: int(len(data) * 0.5)])
    source = open_video_source(str(cut))
    got = list(source)
    assert 0 < len(got) < 30
    assert source.stopped_early is not None
    assert str(cut) in source.stopped_early and f"after frame {len(got)} of 30" in source.stopped_early


@pytest.mark.parametrize("content", [b"", b"not a video at all", "half"])
def test_unopenable_video_is_one_error_naming_the_file(tmp_path, content):
    path = tmp_path / "bad.mp4"
    if content == "half":  # an mp4 cut before its index (moov atom at the end)
        whole = _write(tmp_path / "whole.mp4", _frames(10)).read_bytes()
        content = whole[: len(whole) // 2]
    path.write_bytes(content)
    with pytest.raises(DataError, match="bad.mp4: cannot open the video"):
        open_video_source(str(path))


def test_missing_source_names_it(tmp_path):
    with pytest.raises(MissingFileError, match="nope.mp4"):
        open_video_source(str(tmp_path / "nope.mp4"))


def test_frame_folder_in_mot_layout_skips_and_counts_unreadable_frames(tmp_path):
    from PIL import Image

    seq = tmp_path / "SEQ-01"
    (seq / "img1").mkdir(parents=True)
    (seq / "seqinfo.ini").write_text(
        "[Sequence]\nname=SEQ-01\nimDir=img1\nframeRate=25\nseqLength=5\nimWidth=64\nimHeight=48\nimExt=.jpg\n"
    )
    for i, frame in enumerate(_frames(5), start=1):
        Image.fromarray(frame).save(seq / "img1" / f"{i:06d}.jpg")
    (seq / "img1" / "000003.jpg").write_bytes(b"")  # an empty file among good ones
    source = open_video_source(str(seq))
    assert (source.kind, source.name, source.fps, source.num_frames) == ("frames", "SEQ-01", 25.0, 5)
    got = list(source)
    assert len(got) == 4 and source.frames_read == 4
    assert [(n, p.name) for n, p, _ in source.skipped] == [(3, "000003.jpg")]


def test_video_source_kinds():
    assert is_video_source("clip.MP4") and is_video_source("0") and is_video_source("rtsp://cam/1")
    assert not is_video_source("photos/") and not is_video_source("a.jpg")
    assert open_video_source("0").kind == "camera" and open_video_source("0").live
    stream = open_video_source("rtsp://10.0.0.2:554/live")
    assert stream.kind == "stream" and "/" not in stream.name


def test_writer_leaves_a_playable_video_when_the_run_fails(tmp_path):
    path = tmp_path / "out.mp4"
    with pytest.raises(RuntimeError), AnnotatedVideoWriter(path, 10, (48, 64)) as writer:
        for i, frame in enumerate(_frames(8)):
            if i == 5:
                raise RuntimeError("the model failed mid-video")
            writer.write(frame)
    assert len(list(open_video_source(str(path)))) == 5


def test_writer_refuses_a_frame_of_another_size(tmp_path):
    with (
        AnnotatedVideoWriter(tmp_path / "o.mp4", 10, (48, 64)) as writer,
        pytest.raises(DataError, match="frame 1"),
    ):
        writer.write(np.zeros((40, 64, 3), np.uint8))


def test_draw_tracks_colours_by_track_id_and_leaves_the_input_alone():
    frame = np.zeros((60, 80, 3), np.uint8)
    dets = {
        "boxes": torch.tensor([[5.0, 20, 30, 50], [40, 20, 70, 50]]),
        "scores": torch.tensor([0.9, 0.8]),
        "labels": torch.tensor([0, 0]),
        "track_ids": torch.tensor([1, 2]),
    }
    drawn = draw_tracks(frame, dets, ["car"])
    assert frame.max() == 0 and drawn.shape == frame.shape
    left, right = drawn[40, 5], drawn[40, 40]  # the left edges of the two boxes
    assert left.any() and right.any() and not np.array_equal(left, right), "same class, different ids"
    untracked = draw_tracks(frame, {k: v for k, v in dets.items() if k != "track_ids"})
    assert np.array_equal(untracked[40, 5], untracked[40, 40]), "without ids: coloured by class"
