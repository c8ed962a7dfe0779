"""SyntheticVideo: deterministic per seed, consistent track ids, objects that enter, leave and hide each other,
the ``synthetic-video`` spec in the data module, and a round trip through ``detforge data synth --format mot``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detforge.data.mot import list_sequences
from detforge.data.spec import build_dataset
from detforge.data.synthetic import SHAPE_NAMES
from detforge.data.synthetic_video import SyntheticVideo


@pytest.fixture(scope="module")
def video() -> SyntheticVideo:
    return SyntheticVideo(4, sequence_length=40, image_size=128, seed=3)


@pytest.fixture(scope="module")
def sequences(video):
    return list(video.sequences())


def _tracks(sequence) -> dict[int, list[int]]:
    """track id -> the frames (1-based) it is in."""
    frames: dict[int, list[int]] = {}
    for t, entry in sorted(sequence.gt.items()):
        for tid in entry["track_ids"].tolist():
            frames.setdefault(tid, []).append(t)
    return frames


def test_same_seed_same_video_other_seed_other_video(video, sequences):
    again = SyntheticVideo(4, sequence_length=40, image_size=128, seed=3)
    for index in (0, 3):
        a, b = sequences[index], again.sequence(index)
        assert a.gt.keys() == b.gt.keys()
        for t in a.gt:
            assert all(torch.equal(a.gt[t][k], b.gt[t][k]) for k in a.gt[t])
        assert torch.equal(a.frame(17), b.frame(17))
    other = SyntheticVideo(4, sequence_length=40, image_size=128, seed=4).sequence(0)
    assert not torch.equal(other.frame(0), sequences[0].frame(0))
    # random access renders the same frame as playing the sequence through
    assert torch.equal(video[2 * 40 + 5][0], sequences[2].frame(5).float() / 255)


def test_track_ids_are_consistent(video, sequences):
    for sequence in sequences:
        labels: dict[int, int] = {}
        for entry in sequence.gt.values():
            ids = entry["track_ids"]
            assert ids.dtype == torch.int64 and len(ids.unique()) == len(ids)
            assert ids.min() >= 1 and ids.max() <= video.max_objects
            assert entry["boxes"].dtype == torch.float32 and entry["boxes"].shape == (len(ids), 4)
            assert (
                entry["considered"].all() and ((entry["visibility"] > 0) & (entry["visibility"] <= 1)).all()
            )
            for tid, label in zip(ids.tolist(), entry["labels"].tolist()):
                assert labels.setdefault(tid, label) == label  # a track keeps its shape class
                assert 0 <= label < video.num_classes
    _, target = video[5]
    assert target["sequence_id"] == 0 and target["frame_index"] == 5
    assert torch.equal(target["track_ids"], sequences[0].gt[6]["track_ids"])


def test_objects_enter_and_leave(sequences):
    for sequence in sequences:
        tracks = _tracks(sequence)
        assert 1 not in sequence.gt.get(1, {"track_ids": torch.zeros(0)})["track_ids"].tolist()
        assert 1 in tracks and min(tracks[1]) > 1  # track 1 enters
        last = sequence.gt.get(sequence.num_frames, {"track_ids": torch.zeros(0)})["track_ids"].tolist()
        assert 2 in tracks and 2 not in last and max(tracks[2]) < sequence.num_frames  # track 2 leaves


def test_objects_hide_each_other(sequences):
    partly, fully = 0, 0
    for sequence in sequences:
        h, w = sequence.size
        for entry in sequence.gt.values():
            boxes = entry["boxes"]
            inside = (boxes[:, 0] > 0) & (boxes[:, 1] > 0) & (boxes[:, 2] < w) & (boxes[:, 3] < h)
            partly += int(((entry["visibility"] < 0.7) & inside).sum())  # hidden by another object
        for frames in _tracks(sequence).values():
            fully += int(np.any(np.diff(frames) > 1))  # gone for a while inside the sequence, then back
    assert partly > 0 and fully > 0


def test_spec_splits_and_data_module():
    from detforge.data.datamodule import DetectionDataModule

    train = build_dataset("synthetic-video:2", image_size=64)
    val = build_dataset("synthetic-video:2", split="val", image_size=64)
    assert isinstance(train, SyntheticVideo) and (train.num_sequences, train.seed, len(train)) == (2, 0, 120)
    assert (val.num_sequences, val.seed) == (4, 1)
    assert build_dataset("synthetic-video").num_sequences == 8
    with pytest.raises(ValueError, match="RGB images only"):
        build_dataset("synthetic-video:2", mode="L")
    dm = DetectionDataModule("synthetic-video:1", imgsz=64, batch_size=4, num_workers=0)
    dm.setup("fit")
    assert dm.train_dataset.height == 64  # rendered at the data module's imgsz
    images, targets = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, 64, 64)
    assert all(t["track_ids"].shape == t["labels"].shape for t in targets)


def test_synth_command_writes_mot_layout_that_reads_back(tmp_path):
    from detforge.commands.data import main

    out = tmp_path / "mot"
    args = [
        "synth",
        "--out",
        str(out),
        "--format",
        "mot",
        "--data",
        "synthetic-video:1",
        "--image-size",
        "64",
    ]
    assert main(args) == 0
    train = list_sequences(out, "train")
    val = list_sequences(out, "val")
    assert len(train) == 1 and len(val) == 4
    source = SyntheticVideo(1, image_size=64, seed=0).sequence(0)
    (read,) = train
    assert (read.name, read.num_frames, read.fps, read.size) == (source.name, 60, 30.0, (64, 64))
    assert read.class_names == tuple(SHAPE_NAMES[:5]) and read.protocol == "all"
    assert read.gt.keys() == source.gt.keys()
    for t, entry in source.gt.items():
        for key in ("boxes", "labels", "track_ids", "considered"):
            assert torch.equal(read.gt[t][key], entry[key]), (t, key)
        assert torch.allclose(read.gt[t]["visibility"], entry["visibility"], atol=5e-6)
    assert torch.equal(read.frame(10), source.frame(10))  # png: lossless
    dataset = build_dataset(f"mot:{out}", split="val")
    assert dataset.class_names == list(SHAPE_NAMES[:5]) and len(dataset) == 4 * 60
