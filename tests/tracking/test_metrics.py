"""MOT metrics equal TrackEval's (the ``trackeval`` package, run here on numpy 2 as it is: no alias patch is
needed) on random sequences, degenerate ones, MOTChallenge files and a synthetic-video sequence."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detforge.data.mot import read_mot_txt, write_mot_txt
from detforge.tracking.metrics import MOTResult, evaluate_sequence, evaluate_sequences, sequence_data

trackeval = pytest.importorskip("trackeval")
from trackeval.datasets._base_dataset import _BaseDataset  # noqa: E402

TOL = 1e-9
_QUIET = {"THRESHOLD": 0.5, "PRINT_CONFIG": False}
_HOTA_MEANS = ("HOTA", "DetA", "AssA", "DetRe", "DetPr", "AssRe", "AssPr", "LocA", "OWTA")


def _frame(boxes, ids, **extra) -> dict[str, torch.Tensor]:
    out = {
        "boxes": torch.as_tensor(np.asarray(boxes, np.float64).reshape(-1, 4)),
        "track_ids": torch.as_tensor(np.asarray(ids, np.int64).reshape(-1)),
    }
    return out | {k: torch.as_tensor(np.asarray(v)) for k, v in extra.items()}


def random_run(seed: int, frames: int = 40, objects: int = 8) -> tuple[dict, dict]:
    """Moving boxes; predictions jittered, some missed, false positives, two ids swapped mid-way, random id
    switches; some frames absent from both dicts, some present and empty."""
    rng = np.random.default_rng(seed)
    pos = rng.uniform(0, 300, (objects, 2))
    vel = rng.normal(0, 4, (objects, 2))
    size = rng.uniform(8, 60, (objects, 2))
    pred_ids = np.arange(objects) + 100
    swap = int(rng.integers(1, frames))
    gt, pred = {}, {}
    for t in range(1, frames + 1):
        if rng.random() < 0.1:
            continue  # a frame with no rows in either file
        if rng.random() < 0.1:
            gt[t], pred[t] = _frame([], []), _frame([], [])
            continue
        if t == swap:
            pred_ids[[0, 1]] = pred_ids[[1, 0]]
        if rng.random() < 0.1:
            pred_ids[int(rng.integers(objects))] = 1000 + t  # an id switch to a new track
        centre = pos + vel * t
        boxes = np.concatenate([centre, centre + size], axis=1)  # [K, 4] xyxy
        present = rng.random(objects) < 0.85
        gt[t] = _frame(boxes[present], np.flatnonzero(present) + 1)
        seen = present & (rng.random(objects) < 0.85)
        jitter = rng.normal(0, 3, (objects, 2))
        noisy = np.concatenate(
            [centre + jitter, centre + jitter + size * rng.uniform(0.8, 1.2, (objects, 2))], 1
        )
        extra = rng.uniform(0, 300, (int(rng.integers(0, 3)), 2))
        fp = np.concatenate([extra, extra + 30], axis=1)
        ids = np.concatenate([pred_ids[seen], 5000 + t * 10 + np.arange(len(fp))])
        pred[t] = _frame(np.concatenate([noisy[seen], fp]), ids, scores=rng.random(len(ids)))
    return gt, pred


def reference(gt: dict, pred: dict, num_frames: int) -> dict[str, dict]:
    """TrackEval's HOTA, CLEAR and Identity on the data dict built here (no detforge code involved)."""
    gt_ids, tr_ids, sims = [], [], []
    for t in range(1, num_frames + 1):
        g, p = gt.get(t, _frame([], [])), pred.get(t, _frame([], []))
        g_boxes, g_ids = g["boxes"].double().numpy(), g["track_ids"].numpy()
        keep = p["track_ids"].numpy() >= 0
        p_boxes, p_ids = p["boxes"].double().numpy()[keep], p["track_ids"].numpy()[keep]
        gt_ids.append(g_ids)
        tr_ids.append(p_ids)
        sims.append(_BaseDataset._calculate_box_ious(g_boxes, p_boxes, box_format="x0y0x1y1"))
    unique_gt = np.unique(np.concatenate([np.zeros(0, int), *gt_ids]))
    unique_tr = np.unique(np.concatenate([np.zeros(0, int), *tr_ids]))
    data = {
        "gt_ids": [np.searchsorted(unique_gt, i) for i in gt_ids],
        "tracker_ids": [np.searchsorted(unique_tr, i) for i in tr_ids],
        "similarity_scores": sims,
        "num_gt_dets": sum(map(len, gt_ids)),
        "num_tracker_dets": sum(map(len, tr_ids)),
        "num_gt_ids": len(unique_gt),
        "num_tracker_ids": len(unique_tr),
        "num_timesteps": num_frames,
        "seq": "seq",
    }
    return evaluate_reference(data)


def evaluate_reference(data: dict) -> dict[str, dict]:
    return {
        "HOTA": trackeval.metrics.HOTA().eval_sequence(data),
        "CLEAR": trackeval.metrics.CLEAR(_QUIET).eval_sequence(data),
        "Identity": trackeval.metrics.Identity(_QUIET).eval_sequence(data),
    }


def combine_reference(results: list[dict[str, dict]]) -> dict[str, dict]:
    metrics = {
        "HOTA": trackeval.metrics.HOTA(),
        "CLEAR": trackeval.metrics.CLEAR(_QUIET),
        "Identity": trackeval.metrics.Identity(_QUIET),
    }
    return {k: m.combine_sequences({str(i): r[k] for i, r in enumerate(results)}) for k, m in metrics.items()}


def max_difference(ours, ref: dict[str, dict]) -> float:
    """Largest absolute difference over every metric detforge reports (HOTA's as the mean over the IoU
    thresholds, as TrackEval summarises them) and over HOTA's per-threshold arrays."""
    diffs = [abs(getattr(ours, k) - float(np.mean(ref["HOTA"][k]))) for k in _HOTA_MEANS]
    for k in ("HOTA_TP", "HOTA_FN", "HOTA_FP", "AssA", "AssRe", "AssPr", "LocA"):
        diffs.append(float(np.max(np.abs(ours.raw["HOTA"][f"{k}_array"] - ref["HOTA"][k]))))
    for family in ("CLEAR", "Identity"):
        for k, value in ours.as_dict().items():
            if k in ref[family] and k != "CLR_Frames":
                diffs.append(abs(float(value) - float(ref[family][k])))
    return max(diffs)


@pytest.mark.parametrize("seed", range(6))
def test_random_sequences_match_trackeval(seed):
    gt, pred = random_run(seed)
    ours = evaluate_sequence(gt, pred, num_frames=42)
    assert max_difference(ours, reference(gt, pred, 42)) <= TOL
    assert ours.IDSW > 0 and 0 < ours.HOTA < 1 and ours.MOTA < 1


def test_combined_over_sequences_matches_trackeval():
    runs = [random_run(seed, frames=20 + 10 * seed) for seed in range(4)]
    ours = [evaluate_sequence(g, p, name=f"s{i}") for i, (g, p) in enumerate(runs)]
    refs = [reference(g, p, max([*g, *p])) for g, p in runs]
    result = MOTResult.of(ours)
    assert max_difference(result.combined, combine_reference(refs)) <= TOL
    assert result.combined.num_frames == sum(m.num_frames for m in ours)
    table = result.table()
    assert table.splitlines()[0].split()[:4] == ["sequence", "HOTA", "DetA", "AssA"]
    assert [line.split()[0] for line in table.splitlines()[2:]] == ["s0", "s1", "s2", "s3", "COMBINED"]
    assert set(result.as_dict()["sequences"]) == {"s0", "s1", "s2", "s3"}


@pytest.mark.parametrize("case", ["no_predictions", "no_gt", "both_empty", "one_frame", "unconfirmed"])
def test_degenerate_sequences_match_trackeval(case):
    gt, pred = random_run(7, frames=10)
    if case == "no_predictions":
        pred = {}
    elif case == "no_gt":
        gt = {t: _frame([], []) for t in gt}
    elif case == "both_empty":
        gt, pred = {}, {}
    elif case == "one_frame":
        gt, pred = {3: gt[3]}, {3: pred[3]}
    else:  # predictions without a track id (-1) are not scored
        pred = {t: _frame(p["boxes"], torch.full_like(p["track_ids"], -1)) for t, p in pred.items()}
        pred[2] = _frame(gt[2]["boxes"], gt[2]["track_ids"])
    ours = evaluate_sequence(gt, pred, num_frames=10)
    assert max_difference(ours, reference(gt, pred, 10)) <= TOL


def test_perfect_tracks_score_one():
    gt, _ = random_run(3)
    ours = evaluate_sequence(gt, gt)
    assert abs(ours.HOTA - 1) < 1e-12 and ours.MOTA == 1.0 and ours.IDF1 == 1.0 and ours.IDSW == 0
    assert ours.as_dict()["CLR_FP"] == 0 and "raw" not in ours.as_dict()


def _mot_challenge_run(seed: int) -> tuple[dict, dict]:
    """Random gt with MOTChallenge classes and considered flags (integer boxes, as in the files)."""
    gt, pred = random_run(seed)
    rng = np.random.default_rng(seed + 100)
    for entry in gt.values():
        n = len(entry["track_ids"])
        entry["boxes"] = entry["boxes"].round()
        entry["labels"] = torch.as_tensor(rng.choice([0, 0, 0, 1, 2, 5, 6, 7, 11, 12], size=n))
        entry["considered"] = torch.as_tensor(rng.random(n) < 0.85)
        entry["visibility"] = torch.as_tensor(rng.random(n))
    for entry in pred.values():
        entry["boxes"] = entry["boxes"].round()
    return gt, pred


@pytest.mark.parametrize("benchmark", ["MOT17", "MOT20"])
@pytest.mark.parametrize("preproc", [True, False])
def test_mot_challenge_files_match_trackeval_end_to_end(tmp_path, benchmark, preproc):
    """Files read by TrackEval's MotChallenge2DBox (its distractor and class handling) vs read_mot_txt +
    evaluate_sequence with the matching protocol."""
    from trackeval.datasets import MotChallenge2DBox

    gt, pred = _mot_challenge_run(11)
    write_mot_txt(tmp_path / "gt" / "seq" / "gt" / "gt.txt", gt, gt=True)
    write_mot_txt(tmp_path / "trackers" / "t" / "data" / "seq.txt", pred)
    dataset = MotChallenge2DBox(
        {
            "GT_FOLDER": str(tmp_path / "gt"),
            "TRACKERS_FOLDER": str(tmp_path / "trackers"),
            "SKIP_SPLIT_FOL": True,
            "SEQ_INFO": {"seq": 40},
            "TRACKERS_TO_EVAL": ["t"],
            "BENCHMARK": benchmark,
            "DO_PREPROC": preproc,
            "PRINT_CONFIG": False,
        }
    )
    data = dataset.get_preprocessed_seq_data(dataset.get_raw_seq_data("t", "seq"), "pedestrian")
    ref = evaluate_reference(data)
    protocol = benchmark.lower() if preproc else "all"
    gt_read = read_mot_txt(tmp_path / "gt" / "seq" / "gt" / "gt.txt", gt=True, dtype=torch.float64)
    pred_read = read_mot_txt(tmp_path / "trackers" / "t" / "data" / "seq.txt", dtype=torch.float64)
    ours = evaluate_sequence(gt_read, pred_read, num_frames=40, protocol=protocol)
    assert max_difference(ours, ref) <= TOL
    prepared = sequence_data(gt_read, pred_read, num_frames=40, protocol=protocol)
    assert prepared["num_gt_dets"] == data["num_gt_dets"]
    assert prepared["num_tracker_dets"] == data["num_tracker_dets"]


def test_synthetic_video_with_noisy_tracks_matches_trackeval():
    from detforge.data.synthetic_video import SyntheticVideo

    video = SyntheticVideo(2, sequence_length=30, image_size=128, seed=5)
    rng = np.random.default_rng(0)
    runs, refs = [], []
    for sequence in video.sequences():
        pred = {}
        for t, entry in sequence.gt.items():
            keep = torch.as_tensor(rng.random(len(entry["track_ids"])) < 0.9)
            boxes = entry["boxes"][keep] + torch.as_tensor(rng.normal(0, 1.5, (int(keep.sum()), 4)))
            boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2] + 1)
            ids = entry["track_ids"][keep] + 10
            if t > 15:
                ids = torch.where(ids == 11, 12, torch.where(ids == 12, 11, ids))  # tracks 1 and 2 swap
            pred[t] = _frame(boxes, ids)
        runs.append((sequence, pred))
        refs.append(reference(sequence.gt, pred, sequence.num_frames))
    result = evaluate_sequences(runs)
    for ours, ref in zip(result.sequences, refs):
        assert max_difference(ours, ref) <= TOL
        assert ours.num_frames == 30 and ours.name.startswith("synthetic-5-")
    assert max_difference(result.combined, combine_reference(refs)) <= TOL
    assert 0.3 < result.combined.HOTA < 1 and result.combined.MOTP > 0.7


def test_bad_inputs_are_named():
    gt, pred = random_run(1, frames=5)
    with pytest.raises(ValueError, match="protocol must be one of"):
        evaluate_sequence(gt, pred, protocol="mot16")
    with pytest.raises(ValueError, match=r"frame numbers must lie in 1\.\.3"):
        evaluate_sequence(gt, pred, num_frames=3)
    first = next(t for t, p in pred.items() if len(p["track_ids"]))
    pred[first] = _frame(torch.cat([pred[first]["boxes"]] * 2), torch.cat([pred[first]["track_ids"]] * 2))
    with pytest.raises(ValueError, match=f"frame {first}: a predicted track id appears more than once"):
        evaluate_sequence(gt, pred)
