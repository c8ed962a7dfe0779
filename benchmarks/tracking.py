"""Tracking on ``synthetic-video``: detforge's trackers against BoxMOT's on the same detections, association
time per frame, and ``detforge track`` end to end (issue: video and multi-object tracking).

1. **Accuracy.** A ``detforge_n`` trained on ``synthetic-video`` (``--ckpt``, else trained here by ``detforge
   train`` and kept under ``--project``) detects every frame of the validation sequences once; the same
   detections (scores >= 0.05) go to each of detforge's trackers and to BoxMOT's ByteTrack, OC-SORT and BoT-SORT
   (no re-identification model: appearance-free, as detforge's), each given the same thresholds: the
   checkpoint's F1-best confidence as the high / new-track threshold, 0.1 as ByteTrack's low one, everything
   else at each library's defaults. HOTA, MOTA, IDF1 (and DetA, AssA, ID switches) from
   :mod:`detforge.tracking.metrics` (equal to TrackEval's), combined over the sequences. BoxMOT reports its
   Kalman-filtered boxes, detforge the detections' own boxes: each as its users get them.
2. **Association time** per frame at 10, 100 and 1,000 detections: boxes moving at constant velocity with
   noise over a 1920 x 1080 frame, 200 frames (60 at 1,000), median per-frame ``update`` time without a frame
   (BoT-SORT's camera-motion estimate off on both sides), trackers run in turn within each round
   (``--rounds``), the median of the round medians.
3. **End to end**: ``detforge track``'s loop on a 640 x 640 video (a rendered ``synthetic-video`` sequence,
   written as MPEG-4) with the checkpoint at batch 1, with and without the annotated video, against the network
   alone on the same frames in the same rounds (medians of 3): frames/s and the share of the frame time
   outside the network.

Goals (issue): HOTA / MOTA / IDF1 equal or better than the best of BoxMOT's; association under 4 ms at 100
detections; tracking and IO under 10% of the frame time. Never run beside another benchmark.

    uv run --group bench python benchmarks/tracking.py [--ckpt C] [--train-time 00:00:10:00] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import cpu_summary  # noqa: E402

TRAIN_DATA = "synthetic-video:16"
VAL_DATA = "synthetic-video:16"  # the validation split of the same spec: 8 sequences of 60 frames, seed 1


def train_checkpoint(project: Path, budget: str) -> Path:
    """``detforge train --model detforge_n --data synthetic-video:16`` for ``budget`` (256 px frames)."""
    run = project / "detforge_n"
    best = run / "best.ckpt"
    if best.is_file():
        print(f"checkpoint: {best} (trained earlier; delete it to train again)")
        return best
    cmd = [sys.executable, "-m", "detforge.cli", "train", "--model", "detforge_n", "--data", TRAIN_DATA]
    cmd += ["--trainer.max_time", budget, "--trainer.max_epochs", "100000", "--project", str(project)]
    cmd += ["--name", "detforge_n"]
    print("training:", " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True)
    return best


def boxmot_trackers(conf: float, cmc: bool = True) -> dict:
    """BoxMOT's appearance-free trackers at the thresholds detforge's get (see the module docstring); BoT-SORT
    with its camera-motion compensation (ECC) unless ``cmc`` is False."""
    import logging

    from boxmot import BotSort, ByteTrack, OcSort

    try:  # BoxMOT logs each tracker's settings (INFO) and every ECC failure (WARNING) through loguru
        from loguru import logger

        logger.remove()
    except ImportError:
        pass
    logging.getLogger("boxmot").setLevel(logging.ERROR)

    return {
        "boxmot ByteTrack": lambda: ByteTrack(min_conf=0.1, track_thresh=conf),
        "boxmot OC-SORT": lambda: OcSort(min_conf=0.1, det_thresh=conf),
        "boxmot BoT-SORT": lambda: BotSort(
            track_high_thresh=conf,
            track_low_thresh=0.1,
            new_track_thresh=min(conf + 0.1, 1.0),
            use_embeddings=False,
            use_cmc=cmc,
            reid_model=None,
            reid_weights=None,
        ),
    }


class BoxMOTAdapter:
    """A BoxMOT tracker with detforge's ``update(detections, image) -> dict`` for the metrics."""

    minimum_score = 0.1  # what each is given: min_conf / track_low_thresh

    def __init__(self, factory) -> None:
        self.factory = factory
        self.reset()

    def reset(self) -> None:
        self.tracker = self.factory()

    def update(self, detections: dict, image: np.ndarray | None = None) -> dict:
        dets = np.concatenate(
            [
                detections["boxes"].numpy(),
                detections["scores"].numpy()[:, None],
                detections["labels"].numpy()[:, None].astype(np.float32),
            ],
            1,
        ).astype(np.float32)  # [N, 6]: x1, y1, x2, y2, score, class
        frame = image[:, :, ::-1].copy() if image is not None else np.zeros((8, 8, 3), np.uint8)
        out = np.asarray(self.tracker.update(dets, frame)).reshape(
            -1, 8
        )  # [M, 8]: xyxy, id, score, class, det
        return {
            "boxes": torch.as_tensor(out[:, :4], dtype=torch.float32),
            "scores": torch.as_tensor(out[:, 5], dtype=torch.float32),
            "labels": torch.as_tensor(out[:, 6], dtype=torch.int64),
            "track_ids": torch.as_tensor(out[:, 4], dtype=torch.int64),
        }


def detect_sequences(ckpt: Path, batch: int = 8):
    """The validation sequences and every frame's detections (score >= 0.05) from the checkpoint."""
    from detforge.data.spec import build_dataset
    from detforge.engine.validate import load_detector
    from detforge.engines import TorchEngine
    from detforge.engines.pipeline import DetectionPipeline

    detector = load_detector(ckpt, "cpu")
    imgsz = int(detector.hparams.get("imgsz") or 256)
    pipeline = DetectionPipeline(detector, TorchEngine(detector.model), imgsz)
    sequences = list(build_dataset(VAL_DATA, "val").sequences())
    detections = []
    for seq in sequences:
        frames = [seq.frame(i) for i in range(len(seq))]  # uint8 [3, H, W] each
        per_frame = []
        for start in range(0, len(frames), batch):
            for pred in pipeline(frames[start : start + batch]):
                keep = pred["scores"] >= 0.05
                per_frame.append({k: v[keep].cpu() for k, v in pred.items()})
        detections.append((frames, per_frame))
    return detector, sequences, detections


def accuracy(sequences, detections, trackers: dict, conf: float) -> list[tuple[str, dict]]:
    """Each tracker gets what ``detforge track`` gives it: the detections down to its ``minimum_score`` (its
    low threshold), or down to ``conf`` for a tracker without one (SORT)."""
    from detforge.tracking.metrics import evaluate_sequences

    rows = []
    for name, make in trackers.items():
        tracker = make()
        floor = min(getattr(tracker, "minimum_score", conf), conf)
        runs = []
        for seq, (frames, per_frame) in zip(sequences, detections, strict=True):
            tracker.reset()
            tracked = {}
            for number, (frame, dets) in enumerate(zip(frames, per_frame, strict=True), start=1):
                keep = dets["scores"] >= floor
                dets = {k: v[keep] for k, v in dets.items()}
                tracked[number] = tracker.update(dets, image=frame.permute(1, 2, 0).numpy())
            runs.append((seq, tracked))
        combined = evaluate_sequences(runs).combined
        rows.append((name, combined.as_dict()))
        print(
            f"  {name:<22} HOTA {combined.HOTA:.3f}  MOTA {combined.MOTA:.3f}  IDF1 {combined.IDF1:.3f}  "
            f"DetA {combined.DetA:.3f}  AssA {combined.AssA:.3f}  IDSW {combined.IDSW}",
            flush=True,
        )
    return rows


def moving_boxes(n: int, frames: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    pos = rng.uniform(0, 1800, (n, 2))
    vel = rng.uniform(-3, 3, (n, 2))
    size = rng.uniform(20, 60, (n, 2))
    out = []
    for t in range(frames):
        p = pos + vel * t
        boxes = np.concatenate([p, p + size], 1) + rng.normal(0, 1, (n, 4))  # [N, 4]
        out.append(
            {
                "boxes": torch.tensor(boxes, dtype=torch.float32),
                "scores": torch.tensor(rng.uniform(0.05, 1, n), dtype=torch.float32),
                "labels": torch.zeros(n, dtype=torch.int64),
            }
        )
    return out


def association_times(trackers: dict, rounds: int) -> dict[tuple[str, int], float]:
    """Median ms per ``update`` for each tracker and detection count, medians over ``rounds``."""
    times: dict[tuple[str, int], list[float]] = {}
    for n in (10, 100, 1000):
        frames = moving_boxes(n, 200 if n < 1000 else 60)
        for _ in range(rounds):
            for name, make in trackers.items():
                tracker = make()
                per_frame = []
                for dets in frames:
                    start = time.perf_counter()
                    tracker.update(dets)  # association alone: no frame, no camera-motion estimate
                    per_frame.append(time.perf_counter() - start)
                times.setdefault((name, n), []).append(statistics.median(per_frame[5:]) * 1000)
    return {key: statistics.median(values) for key, values in times.items()}


def end_to_end(ckpt: Path, frames: int = 150, rounds: int = 3) -> None:
    """``detforge track``'s loop (in process, as the CLI runs it) on a 640 px video at batch 1, against the
    network alone (the same pipeline on the same frames, decoded beforehand) in the same rounds: the share of
    the frame time outside the network is ``1 - network / end to end``. Decoding and encoding threads take
    CPU from the network, which the loop's own counters would not show."""
    from detforge.commands.inference import prepare_inference
    from detforge.commands.track import build_parser
    from detforge.data.synthetic_video import SyntheticVideo
    from detforge.tracking.registry import create_detector_tracker
    from detforge.tracking.run import frame_tensor, run_sequence
    from detforge.tracking.video import AnnotatedVideoWriter, open_video_source

    with tempfile.TemporaryDirectory() as tmp:
        video = Path(tmp) / "synthetic640.mp4"
        seq = SyntheticVideo(num_sequences=1, sequence_length=frames, image_size=640, seed=3).sequence(0)
        with AnnotatedVideoWriter(video, seq.fps, (640, 640)) as writer:
            for i in range(frames):
                writer.write(seq.frame(i).permute(1, 2, 0).numpy())
        parser = build_parser()
        args = parser.parse_args(["--ckpt", str(ckpt), str(video), "--batch", "1", "--device", "cpu"])
        started = prepare_inference(args, parser, batch=1)
        decoded = [frame_tensor(f) for f in open_video_source(str(video))]  # uint8 [3, 640, 640] each

        def network_only() -> float:
            start = time.perf_counter()
            for image in decoded:
                started.pipeline([image])
            return time.perf_counter() - start

        def tracked(draw: bool):
            def run() -> float:
                tracker = create_detector_tracker("bytetrack", conf=started.conf)
                report = run_sequence(
                    open_video_source(str(video)),
                    started.pipeline,
                    conf=started.conf,
                    tracker=tracker,
                    out=Path(tmp) / "out",
                    batch=1,
                    draw=draw,
                    progress=False,
                )
                tracked.reports[draw] = report
                return report.wall

            return run

        tracked.reports = {}
        runs = {"network": network_only, "video": tracked(True), "no-draw": tracked(False)}
        times: dict[str, list[float]] = {k: [] for k in runs}
        for r in range(rounds):
            for name in list(runs)[:: 1 if r % 2 == 0 else -1]:
                times[name].append(runs[name]() / frames * 1000)
        ms = {k: statistics.median(v) for k, v in times.items()}
        print(f"  network alone (pre-processing, network, post-processing): {ms['network']:.1f} ms a frame")
        for key, draw, what in (("video", True, "annotated video written"), ("no-draw", False, "--no-draw")):
            report = tracked.reports[draw]
            parts = ", ".join(f"{k} {v / report.frames * 1000:.2f}" for k, v in report.seconds.items())
            print(
                f"  {what}: {1000 / ms[key]:.1f} frames/s ({ms[key]:.1f} ms a frame); outside the network "
                f"{(1 - ms['network'] / ms[key]) * 100:.1f}%; the loop's last run, ms a frame: {parts}",
                flush=True,
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", type=Path, default=None)
    parser.add_argument("--project", type=Path, default=Path("runs/bench_tracking"))
    parser.add_argument("--train-time", default="00:00:10:00", help="training budget without --ckpt")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the association timing")
    parser.add_argument("--parts", nargs="+", default=["accuracy", "association", "end-to-end"])
    args = parser.parse_args(argv)
    from detforge.engine.threads import configure_threads

    configure_threads()
    print(cpu_summary(), flush=True)
    ckpt = args.ckpt or train_checkpoint(args.project, args.train_time)
    from detforge.tracking import create_tracker, list_trackers, tracker_thresholds

    detector = None
    if "accuracy" in args.parts:
        detector, sequences, detections = detect_sequences(ckpt)
        conf = float(detector.best_conf or 0.25)
        frames = sum(len(s) for s in sequences)
        print(
            f"accuracy on {VAL_DATA} (val split): {len(sequences)} sequences, {frames} frames, conf {conf:.3f}"
        )
        ours = {
            f"detforge {name}": (lambda n=name: create_tracker(n, **tracker_thresholds(n, conf)))
            for name in list_trackers()
            if name != "memory"  # the edge detectors' tracker wants their GRU memory
        }
        theirs = {name: (lambda f=make: BoxMOTAdapter(f)) for name, make in boxmot_trackers(conf).items()}
        accuracy(sequences, detections, {**ours, **theirs}, conf)
    if "association" in args.parts:
        print(f"association time per frame (ms, medians of {args.rounds} rounds):")
        trackers = {
            "detforge bytetrack": lambda: create_tracker("bytetrack", high_conf_det_threshold=0.5),
            "detforge ocsort": lambda: create_tracker("ocsort"),
            "detforge botsort": lambda: create_tracker("botsort", cmc_method="none"),
            **{
                name: (lambda f=make: BoxMOTAdapter(f))
                for name, make in boxmot_trackers(0.5, cmc=False).items()
            },
        }
        times = association_times(trackers, args.rounds)
        for name in trackers:
            cells = "  ".join(f"{n:>5}: {times[(name, n)]:7.2f}" for n in (10, 100, 1000))
            print(f"  {name:<22} {cells}", flush=True)
    if "end-to-end" in args.parts:
        print("detforge track end to end (640 x 640 MPEG-4, batch 1):")
        end_to_end(ckpt)
    return 0


if __name__ == "__main__":
    sys.exit(main())
