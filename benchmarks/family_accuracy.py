"""Accuracy of detector families under the same time budget: each model trained by the default recipe, one run.

Every model runs `detforge train --model NAME` with the default recipe (synthetic:1024 at 128 px, batch 16,
the 4:30 training budget with the schedule fitted to it), one after the other on this machine, and its final
validation mAP@[.5:.95] (and per-area AP) is read from the run's ``results.json``. The peer is ``detforge_n``
trained in the same run; the ratio is each model's mAP over the peer's. Never run beside another benchmark.

    uv run python benchmarks/family_accuracy.py [--models detforge_n yolov3_n centernet_n yolov1_n]
        [--budget 00:00:04:30] [--data synthetic:1024] [--project runs/family_accuracy]
        [--model-kwargs NAME=JSON ...] [-- extra train flags (every model)]
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from detforge.engine.memory_format import cpu_name


def train(name: str, args: argparse.Namespace, extra: list[str]) -> dict:
    run = f"{name}-{time.strftime('%H%M%S')}"
    cmd = [sys.executable, "-m", "detforge.cli", "train", "--model", name, "--data", args.data]
    own = dict(item.split("=", 1) for item in args.model_kwargs).get(name)
    if own is not None:
        cmd += ["--model.model_kwargs", own]
    cmd += ["--trainer.max_time", args.budget, "--project", args.project, "--name", run, *extra]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    results = Path(args.project) / run / "results.json"
    if results.parent.is_dir():  # the run's log beside its results: thread and precision choices, steps
        (results.parent / "train.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0 or not results.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return {"model": name, "error": " | ".join(tail), "wall_s": wall}
    stats = json.loads(results.read_text())
    keys = ("map", "map_50", "map_small", "map_medium", "map_large")
    row = {"model": name, "wall_s": wall, **{k: float(stats[k]) for k in keys}, "run": str(results.parent)}
    return {**row, "steps": last_step(results.parent / "metrics.csv")}


def last_step(metrics: Path) -> int | None:
    """The last optimizer step logged in a run's ``metrics.csv`` (None without one)."""
    if not metrics.is_file():
        return None
    with metrics.open() as f:
        steps = [row["step"] for row in csv.DictReader(f) if row.get("step")]
    return int(steps[-1]) if steps else None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["detforge_n", "yolov3_n", "centernet_n", "yolov1_n"])
    parser.add_argument("--peer", default="detforge_n", help="the model the ratios are taken against")
    parser.add_argument("--budget", default="00:00:04:30", help="--trainer.max_time of every run")
    parser.add_argument("--data", default="synthetic:1024")
    parser.add_argument("--project", default="runs/family_accuracy")
    parser.add_argument(
        "--model-kwargs",
        nargs="*",
        default=[],
        metavar="NAME=JSON",
        help="one model's --model.model_kwargs (e.g. faster_rcnn_resnet18='{\"representation_size\": 256}')",
    )
    parser.add_argument("--out", default=None, help="also write the rows as JSON here")
    args = parser.parse_args(argv)

    models = list(dict.fromkeys([args.peer, *args.models]))
    print(f"CPU: {cpu_name()}, capability {torch.backends.cpu.get_cpu_capability()}")
    print(f"budget {args.budget} per model, data {args.data}, extra flags {extra or 'none'}")
    rows = []
    for name in models:
        row = train(name, args, extra)
        rows.append(row)
        print(json.dumps(row), flush=True)
    peer = next((r for r in rows if r["model"] == args.peer and "map" in r), None)
    print(f"\n{'model':<16} {'mAP':>6} {'AP50':>6} {'APs':>6} {'APm':>6} {'APl':>6} {'x peer':>7} {'wall':>6}")
    for r in rows:
        if "map" not in r:
            print(f"{r['model']:<16} failed: {r['error']}")
            continue
        ratio = f"{r['map'] / peer['map']:.2f}" if peer and peer["map"] > 0 else "-"
        print(
            f"{r['model']:<16} {r['map']:6.3f} {r['map_50']:6.3f} {r['map_small']:6.3f} {r['map_medium']:6.3f} "
            f"{r['map_large']:6.3f} {ratio:>7} {r['wall_s']:5.0f}s"
        )
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
