"""``detforge track`` and ``detforge predict`` on videos through ``detforge.cli.main``: every source kind, the
outputs (annotated video, MOT txt, predictions.json), broken sources named, and the detections equal to
``predict``'s on the same frames."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from detforge.cli import main as cli_main
from detforge.data.mot import read_mot_txt
from detforge.tracking.video import AnnotatedVideoWriter, open_video_source


def _frames(n: int, h: int = 64, w: int = 96) -> list[np.ndarray]:
    """Two shapes crossing over a textured background (RGB [H, W, 3] uint8)."""
    rng = np.random.default_rng(0)
    background = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
    out = []
    for i in range(n):
        frame = background.copy()
        frame[10:30, 4 + 3 * i : 24 + 3 * i] = (240, 60, 60)
        frame[34:54, 70 - 3 * i : 90 - 3 * i] = (60, 240, 60)
        out.append(frame)
    return out


@pytest.fixture
def video(tmp_path):
    path = tmp_path / "clip.avi"  # MJPG: near-lossless, so frames decode as written
    with AnnotatedVideoWriter(path, 10, (64, 96)) as writer:
        for frame in _frames(12):
            writer.write(frame)
    return path


@pytest.fixture
def sequence(tmp_path):
    """A MOT-layout sequence folder: seqinfo.ini, img1/000001.png ..."""
    seq = tmp_path / "mot" / "SEQ-02"
    (seq / "img1").mkdir(parents=True)
    (seq / "seqinfo.ini").write_text("[Sequence]\nname=SEQ-02\nimDir=img1\nframeRate=10\nseqLength=8\n")
    for i, frame in enumerate(_frames(8), start=1):
        Image.fromarray(frame).save(seq / "img1" / f"{i:06d}.png")
    return seq


def _track(argv, out):
    return cli_main(["track", *argv, "--out", str(out), "--device", "cpu"])


def test_track_a_video_writes_video_mot_txt_and_json(tiny_checkpoint, video, tmp_path, capsys):
    out = tmp_path / "out"
    # the tiny model is untrained (scores about 0.01): every box it gives is tracked
    argv = ["--ckpt", str(tiny_checkpoint), str(video), "--conf", "0", "--tracker-option", "minimum_score=0"]
    argv += ["--tracker-option", "track_activation_threshold=0"]
    assert _track([*argv, "--batch", "4"], out) == 0
    err = capsys.readouterr().err
    assert "frames/s" in err and "clip.avi: 12 frames" in err
    assert len(list(open_video_source(str(out / "clip.mp4")))) == 12
    records = json.loads((out / "predictions.json").read_text())
    assert [r["frame"] for r in records] == list(range(1, 13))
    assert all(r["file"] == str(video) and (r["height"], r["width"]) == (64, 96) for r in records)
    mot = read_mot_txt(out / "clip.txt")
    from_json = {r["frame"]: sorted(d["track_id"] for d in r["detections"]) for r in records}
    from_mot = {f: sorted(d["track_ids"].tolist()) for f, d in mot.items() if len(d["track_ids"])}
    assert from_mot == {f: ids for f, ids in from_json.items() if ids}, "the MOT file holds the JSON's tracks"
    assert from_mot and min(min(ids) for ids in from_mot.values()) >= 1


def test_track_reads_frame_folders_and_folders_of_sequences(tiny_checkpoint, sequence, tmp_path):
    out = tmp_path / "out"
    argv = ["--ckpt", str(tiny_checkpoint), str(sequence.parent), "--conf", "0.05", "--no-draw"]
    assert _track(argv, out) == 0
    assert (out / "SEQ-02.txt").is_file() and not (out / "SEQ-02.mp4").exists()
    records = json.loads((out / "predictions.json").read_text())
    assert [r["frame"] for r in records] == list(range(1, 9))
    assert records[2]["image"].endswith("000003.png")


def test_track_names_a_broken_source_and_keeps_the_others(tiny_checkpoint, video, tmp_path, capsys):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"")
    out = tmp_path / "out"
    assert _track(["--ckpt", str(tiny_checkpoint), str(bad), str(video), "--no-draw"], out) == 1
    err = capsys.readouterr().err
    assert f"{bad}: cannot open the video (an empty file)" in err
    assert (out / "clip.txt").is_file() and json.loads((out / "predictions.json").read_text())


def test_track_truncated_video_names_the_last_good_frame(tiny_checkpoint, video, tmp_path, capsys):
    cut = tmp_path / "cut.avi"
    data = video.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    assert _track(["--ckpt", str(tiny_checkpoint), str(cut)], out) == 1
    err = capsys.readouterr().err
    assert "decoding stopped after frame" in err and "of 12" in err
    written = len(list(open_video_source(str(out / "cut.mp4"))))
    assert 0 < written < 12 and written == len(json.loads((out / "predictions.json").read_text()))


def test_track_rejects_unknown_trackers_and_options(tiny_checkpoint, video, tmp_path, capsys):
    assert _track(["--ckpt", str(tiny_checkpoint), str(video), "--tracker", "nope"], tmp_path / "o") == 2
    assert "nope" in capsys.readouterr().err
    argv = ["--ckpt", str(tiny_checkpoint), str(video), "--tracker-option", "colour=red"]
    assert _track(argv, tmp_path / "o") == 2
    assert "colour" in capsys.readouterr().err


def test_predict_on_a_video_equals_predict_on_its_frames(tiny_checkpoint, video, tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    decoded = list(open_video_source(str(video)))
    for i, frame in enumerate(decoded, start=1):
        Image.fromarray(frame).save(frames / f"{i:03d}.png")
    common = ["--ckpt", str(tiny_checkpoint), "--conf", "0.05", "--device", "cpu", "--batch", "5"]
    assert cli_main(["predict", str(video), *common, "--out", str(tmp_path / "v")]) == 0
    assert cli_main(["predict", str(frames), *common, "--out", str(tmp_path / "f"), "--no-draw"]) == 0
    from_video = json.loads((tmp_path / "v" / "predictions.json").read_text())
    from_images = json.loads((tmp_path / "f" / "predictions.json").read_text())
    assert len(from_video) == len(from_images) == 12
    for v, f in zip(from_video, from_images, strict=True):
        assert "track_id" not in str(v) and v["detections"] == f["detections"]
    assert (tmp_path / "v" / "clip.mp4").is_file()


def test_track_with_onnxruntime_gives_the_torch_tracks(tiny_checkpoint, video, tmp_path):
    """The exported model tracks as the eager one (the checkpoint's cached ONNX export in onnxruntime)."""
    pytest.importorskip("onnxruntime")
    import shutil

    ckpt = shutil.copy(tiny_checkpoint, tmp_path / "tiny.ckpt")
    argv = ["--ckpt", str(ckpt), str(video), "--conf", "0", "--no-draw", "--batch", "4"]
    argv += ["--tracker-option", "minimum_score=0", "--tracker-option", "track_activation_threshold=0"]
    assert _track(argv, tmp_path / "torch") == 0
    assert _track([*argv, "--engine", "onnxruntime"], tmp_path / "ort") == 0
    eager, ort = read_mot_txt(tmp_path / "torch" / "clip.txt"), read_mot_txt(tmp_path / "ort" / "clip.txt")
    assert sorted(eager) == sorted(ort) and eager
    for frame in eager:
        assert eager[frame]["track_ids"].tolist() == ort[frame]["track_ids"].tolist()
        torch.testing.assert_close(ort[frame]["boxes"], eager[frame]["boxes"], atol=2e-3, rtol=0)
