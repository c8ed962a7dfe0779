"""ONNX latency of registered models in onnxruntime: the graph ``detforge export --nms`` writes (detections at
the end: NMS for the dense detectors, top-k only for the set-prediction ones), same input, same threads.

Each model is built with random weights for ``--classes`` classes, exported at ``--size`` px with detections,
checked against PyTorch (the largest difference of the outputs is printed) and timed in onnxruntime on
``--threads`` intra-op threads: ``--rounds`` rounds that run every model ``--frames`` times in turn (so a
neighbour's burst costs all alike), median and minimum per frame over the rounds' medians. The first model is
the peer the ratios are taken against. Never run beside another benchmark.

    uv run python benchmarks/onnx_latency.py [--models detforge_n rtdetr_n detr_n] [--size 320]
        [--threads 2] [--frames 20] [--rounds 5] [--classes 80]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from detforge.export import check_onnx, export_onnx
from detforge.models import create_model
from timing import cpu_summary  # benchmarks/timing.py, beside this script


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["detforge_n", "rtdetr_n", "detr_n"])
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--frames", type=int, default=20, help="frames per model and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--classes", type=int, default=80)
    args = parser.parse_args()
    import onnxruntime as ort

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    image = torch.rand(1, 3, args.size, args.size)
    sessions = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            model = create_model(name, num_classes=args.classes, input_size=(args.size, args.size)).eval()
            path = export_onnx(model, Path(tmp) / f"{name}.onnx", example_input=image, with_nms=True)
            error = check_onnx(model, path, image)
            options = ort.SessionOptions()
            options.intra_op_num_threads = args.threads
            options.inter_op_num_threads = 1
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            feed = {session.get_inputs()[0].name: image.numpy()}
            for _ in range(3):
                session.run(None, feed)
            sessions[name] = (session, feed)
            print(f"{name}: exported with detections, onnxruntime vs PyTorch max difference {error:.2e}", flush=True)
    medians: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(args.rounds):
        for name, (session, feed) in sessions.items():
            times = []
            for _ in range(args.frames):
                start = time.perf_counter()
                session.run(None, feed)
                times.append(time.perf_counter() - start)
            medians[name].append(statistics.median(times))
    print(f"\n{cpu_summary()}; onnxruntime {ort.__version__}, {args.threads} threads, {args.size} px, batch 1")
    peer = statistics.median(medians[args.models[0]])
    print(f"{'model':<14} {'median ms':>10} {'min ms':>8} {'x ' + args.models[0]:>14}")
    for name, values in medians.items():
        median = statistics.median(values)
        print(f"{name:<14} {median * 1e3:10.1f} {min(values) * 1e3:8.1f} {median / peer:14.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
