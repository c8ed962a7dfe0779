"""MOT text files (read, write, round trip, bad rows named), the MOT layout (seqinfo.ini, splits), the
detection data set over its frames and the ``mot:`` spec."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detforge.data.mot import (
    MOT_CLASSES,
    list_sequences,
    load_sequence,
    read_mot_txt,
    write_mot_txt,
)
from detforge.data.mot_dataset import MOTDetectionDataset
from detforge.data.spec import build_dataset
from detforge.errors import DataError, MissingFileError, UserError

GT = """\
2,7,10,20,30,40,1,1,0.5
1,3,-5,0,20,10,1,1,1

1,4,100,50,10.5,20.25,0,7,0.25
2,3,0,1,20,10,1,1,0.9
"""


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_read_gt_file(tmp_path):
    frames = read_mot_txt(_write(tmp_path / "gt.txt", GT), gt=True)
    assert list(frames) == [1, 2]
    one = frames[1]
    assert one["boxes"].dtype == torch.float32
    assert one["boxes"].tolist() == [[-5, 0, 15, 10], [100, 50, 110.5, 70.25]]  # xyxy, file order kept
    assert one["track_ids"].tolist() == [3, 4] and one["track_ids"].dtype == torch.int64
    assert one["labels"].tolist() == [0, 6]  # MOT class - 1
    assert one["considered"].tolist() == [True, False]
    assert one["visibility"].tolist() == [1.0, 0.25] and one["scores"].tolist() == [1.0, 1.0]
    assert frames[2]["track_ids"].tolist() == [7, 3]


def test_read_results_file_short_rows_and_spaces(tmp_path):
    text = "1,1,10,10,5,5,0.75,-1,-1,-1\n1 2 0 0 4 4\n3, -1, 1, 1, 2, 2, 0.5\n3,-1,5,5,2,2,0.25\n"
    frames = read_mot_txt(_write(tmp_path / "res.txt", text), dtype=torch.float64)
    assert frames[1]["scores"].tolist() == [0.75, 1.0] and frames[1]["boxes"].dtype == torch.float64
    assert frames[1]["labels"].tolist() == [0, 0]
    assert frames[3]["track_ids"].tolist() == [-1, -1]  # untracked detections may share -1
    assert read_mot_txt(_write(tmp_path / "empty.txt", "\n")) == {}


@pytest.mark.parametrize(
    "row, message",
    [
        ("1,2,3", "at least 6 values"),
        ("1,x,0,0,5,5,1,1,1", "not a number"),
        ("0,1,0,0,5,5,1,1,1", "frame must be an integer >= 1"),
        ("1.5,1,0,0,5,5,1,1,1", "frame must be an integer >= 1"),
        ("1,1.5,0,0,5,5,1,1,1", "id must be an integer"),
        ("1,1,nan,0,5,5,1,1,1", "not finite"),
        ("1,1,0,0,-5,5,1,1,1", "negative width or height"),
        ("1,-1,0,0,5,5,1,1,1", "ground-truth id must be >= 0"),
        ("2,3,0,0,5,5,1,1,1", r"id 3 appears twice in frame 2 \(lines 5 and 6\)"),
    ],
)
def test_bad_rows_name_the_file_and_line(tmp_path, row, message):
    path = _write(tmp_path / "gt.txt", GT + row + "\n")
    with pytest.raises(DataError, match=rf"gt\.txt:6: .*{message}"):
        read_mot_txt(path, gt=True)


def test_missing_file():
    with pytest.raises(MissingFileError, match="MOT file not found"):
        read_mot_txt("/nonexistent/gt.txt")


def test_write_read_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    frames = {}
    for t in (1, 2, 5):
        n = int(rng.integers(1, 6))
        xy = rng.uniform(0, 500, (n, 2))
        boxes = torch.as_tensor(np.concatenate([xy, xy + rng.uniform(1, 80, (n, 2))], 1), dtype=torch.float32)
        frames[t] = {
            "boxes": boxes,
            "scores": torch.as_tensor(rng.random(n), dtype=torch.float32),
            "labels": torch.zeros(n, dtype=torch.int64),
            "track_ids": torch.arange(n) + t,
        }
    frames[3] = {"boxes": torch.zeros(0, 4), "track_ids": torch.zeros(0, dtype=torch.int64)}  # no rows
    path = write_mot_txt(tmp_path / "out" / "res.txt", frames)
    assert path == tmp_path / "out" / "res.txt" and [p.name for p in path.parent.iterdir()] == ["res.txt"]
    assert path.read_text().splitlines()[0].endswith(",-1,-1,-1")
    back = read_mot_txt(path)
    assert list(back) == [1, 2, 5]
    for t in back:
        assert torch.allclose(back[t]["boxes"], frames[t]["boxes"], atol=6e-4)
        assert torch.allclose(back[t]["scores"], frames[t]["scores"], atol=6e-6)
        assert torch.equal(back[t]["track_ids"], frames[t]["track_ids"])
    gt = read_mot_txt(_write(tmp_path / "gt.txt", GT), gt=True)
    again = read_mot_txt(write_mot_txt(tmp_path / "gt2.txt", gt, gt=True), gt=True)
    for t in gt:
        assert all(torch.equal(gt[t][k], again[t][k]) for k in gt[t])
    blocker = _write(tmp_path / "file", "")
    with pytest.raises(UserError, match="cannot write .*file/res.txt"):
        write_mot_txt(blocker / "res.txt", frames)
    with pytest.raises(ValueError, match="frame 1 needs track_ids"):
        write_mot_txt(tmp_path / "bad.txt", {1: {"boxes": torch.zeros(2, 4)}})


def _sequence(
    root: Path, name: str, frames: int = 3, size=(120, 160), gt: str | None = GT, seqinfo: bool = True
):
    folder = root / name
    for i in range(1, frames + 1):
        (folder / "img1").mkdir(parents=True, exist_ok=True)
        pixels = np.full((*size, 3), 40 * i, dtype=np.uint8)
        Image.fromarray(pixels).save(folder / "img1" / f"{i:06d}.jpg")
    if gt is not None:
        _write(folder / "gt" / "gt.txt", gt)
    if seqinfo:
        info = f"[Sequence]\nname={name}\nimDir=img1\nframeRate=25\nseqLength={frames}\n"
        _write(folder / "seqinfo.ini", info + f"imWidth={size[1]}\nimHeight={size[0]}\nimExt=.jpg\n")
    return folder


def test_layout_with_seqinfo(tmp_path):
    folder = _sequence(tmp_path / "MOT17" / "train", "MOT17-02-FRCNN")
    seq = load_sequence(folder)
    assert (seq.name, seq.num_frames, seq.fps, seq.size, len(seq)) == (
        "MOT17-02-FRCNN",
        3,
        25.0,
        (120, 160),
        3,
    )
    assert seq.frame_paths[2].endswith("img1/000003.jpg") and seq.protocol == "mot17"
    assert seq.class_names == MOT_CLASSES and seq.gt[2]["track_ids"].tolist() == [7, 3]
    frames = list(seq.frames())
    assert len(frames) == 3 and frames[0].shape == (3, 120, 160) and frames[0].dtype == torch.uint8
    _sequence(tmp_path / "MOT17" / "test", "MOT17-01-FRCNN", gt=None)
    assert [s.name for s in list_sequences(tmp_path / "MOT17", "train")] == ["MOT17-02-FRCNN"]
    assert list_sequences(tmp_path / "MOT17" / "test")[0].gt is None
    assert len(list_sequences(folder)) == 1  # one sequence folder
    with pytest.raises(DataError, match="holds the splits test, train: name one"):
        list_sequences(tmp_path / "MOT17")
    with pytest.raises(MissingFileError):
        list_sequences(tmp_path / "MOT17", "val")


def test_layout_without_seqinfo_and_protocols(tmp_path):
    seq = load_sequence(_sequence(tmp_path, "dancetrack0001", frames=4, seqinfo=False))
    assert (seq.name, seq.num_frames, seq.fps, seq.size, seq.protocol) == (
        "dancetrack0001",
        4,
        30.0,
        (120, 160),
        "all",
    )
    assert load_sequence(_sequence(tmp_path, "MOT20-01")).protocol == "mot20"
    _write(tmp_path / "broken" / "seqinfo.ini", "[Other]\nx=1\n")
    with pytest.raises(DataError, match=r"seqinfo\.ini: no \[Sequence\] section"):
        load_sequence(tmp_path / "broken")
    _sequence(tmp_path, "short", frames=1)
    with pytest.raises(DataError, match="frame 2 beyond the sequence's 1 frames"):
        load_sequence(tmp_path / "short")


def test_detection_dataset_classes_and_tracks(tmp_path):
    split = tmp_path / "MOT17" / "train"
    gt = GT + "1,9,0,0,10,10,0,3,1\n3,5,20,10,8,8,1,1,1\n3,6,1,1,2,2,0,1,1\n"
    for copy in ("DPM", "FRCNN", "SDP"):  # MOT17's three copies of one sequence
        _sequence(split, f"MOT17-02-{copy}", gt=gt)
    _sequence(split, "MOT17-04-FRCNN", frames=2, gt=None)
    with (
        pytest.warns(UserWarning, match="1 sequence.*without gt/gt.txt left out: MOT17-04-FRCNN"),
        pytest.warns(UserWarning, match=r"1 x clipped_box.*MOT17-02-DPM/gt/gt.txt frame 1 id 3"),
    ):
        dataset = MOTDetectionDataset(tmp_path / "MOT17", "train")
    assert len(dataset) == 3 and [s.name for s in dataset.sequences()] == ["MOT17-02-DPM"]
    assert dataset.class_names == ["pedestrian"]
    image, target = dataset[0]
    assert image.shape == (3, 120, 160) and image.dtype == torch.float32
    # frame 1: pedestrian 3 (clipped to the image), static person 4 (ignore), car 9 (not an object here)
    assert target["track_ids"].tolist() == [3, 4] and target["labels"].tolist() == [0, 0]
    assert target["ignore"].tolist() == [False, True] and target["boxes"][0].tolist() == [0, 0, 15, 10]
    assert (target["frame_index"], target["sequence_id"]) == (0, 0)
    _, last = dataset[2]
    assert last["track_ids"].tolist() == [5, 6] and last["ignore"].tolist() == [
        False,
        True,
    ]  # 6 not considered
    assert dataset.issues.counts["clipped_box"] >= 1
    # min_visibility marks faint pedestrians ignore
    with pytest.warns(UserWarning, match="clipped_box"):
        faint = MOTDetectionDataset(split / "MOT17-02-FRCNN", min_visibility=0.95)
    assert faint[1][1]["ignore"].tolist() == [True, True]


def test_mot_spec(tmp_path):
    for split in ("train", "val"):
        _sequence(
            tmp_path / "dance" / split,
            f"dancetrack-{split}",
            frames=2 if split == "train" else 1,
            gt="1,1,0,0,5,5,1,1,1\n",
        )
    assert len(build_dataset(f"mot:{tmp_path / 'dance'}")) == 2
    assert len(build_dataset(f"mot:{tmp_path / 'dance'}", split="val")) == 1
    assert len(build_dataset(f"mot:{tmp_path / 'dance'}:train", split="val")) == 2  # the spec's split wins
    one = build_dataset(f"mot:{tmp_path / 'dance' / 'val'}", imgsz=(12, 16))
    assert one[0][0].shape == (3, 12, 16)
    _sequence(tmp_path / "MOT17" / "train", "MOT17-02-FRCNN")
    _sequence(tmp_path / "MOT17" / "test", "MOT17-01-FRCNN", gt=None)
    with pytest.raises(DataError, match="holds the splits test, train"):
        build_dataset(f"mot:{tmp_path / 'MOT17'}", split="val")
    with pytest.raises(DataError, match="no sequence has gt/gt.txt"):
        build_dataset(f"mot:{tmp_path / 'MOT17'}:test")
    with pytest.raises(DataError, match="accepted forms: .*mot:ROOT"):
        build_dataset("mot:a:b/c")
