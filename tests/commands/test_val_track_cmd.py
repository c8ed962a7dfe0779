"""``detforge val --track``: a video data set's sequences tracked as ``detforge track`` tracks them and scored
against their ground truth; the printed and saved metrics are those of the written MOT results files."""

import json

import pytest

from detforge.cli import main as cli_main
from detforge.data.mot import read_mot_txt
from detforge.data.spec import build_dataset
from detforge.tracking.metrics import evaluate_sequences

SPEC = "synthetic-video:1"
KWARGS = {"sequence_length": 8, "image_size": 96}


def test_val_track_scores_the_written_tracks(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "val"
    argv = ["val", "--ckpt", str(tiny_checkpoint), "--data", SPEC, "--dataset-kwargs", json.dumps(KWARGS)]
    argv += [
        "--track",
        "--conf",
        "0",
        "--tracker-option",
        "minimum_score=0",
        "--out",
        str(out),
        "--batch",
        "4",
    ]
    argv += ["--tracker-option", "track_activation_threshold=0"]
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out
    assert "4 sequences, 32 frames, tracker bytetrack" in printed and "HOTA" in printed
    saved = json.loads((out / "tracking_metrics.json").read_text())
    sequences = list(build_dataset(SPEC, "val", **KWARGS).sequences())
    runs = [(s, read_mot_txt(out / "tracks" / f"{s.name}.txt")) for s in sequences]
    expected = evaluate_sequences(runs).as_dict()
    assert saved["combined"]["HOTA"] == pytest.approx(expected["combined"]["HOTA"], abs=1e-3)
    assert saved["combined"]["IDSW"] == expected["combined"]["IDSW"]
    assert saved["tracker_options"]["high_conf_det_threshold"] == 0.0, (
        "the detector's threshold reaches the tracker"
    )


def test_val_track_needs_a_video_data_set(tiny_checkpoint, tmp_path, capsys):
    argv = ["val", "--ckpt", str(tiny_checkpoint), "--data", "synthetic:8", "--track", "--out", str(tmp_path)]
    assert cli_main(argv) == 2
    assert "has no sequences with track ids" in capsys.readouterr().err
