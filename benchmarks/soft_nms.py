"""Cost of soft-NMS (``detforge.postprocess.batched_soft_nms``, gaussian and linear) against torchvision's hard
``batched_nms`` on the same boxes: detector-like candidates (N boxes jittered around N / 10 objects in a
640 px image, random scores) in 1, 5 and 80 classes. Prints the median time over repeats (the three called
in turn each repeat, so that a busy neighbour costs them alike) and the ratio to
hard NMS (goal: <= 2x at 1,000 boxes), with the CPU and its capability.

    uv run python benchmarks/soft_nms.py --boxes 1000 --repeats 50 --threads 1
"""

from __future__ import annotations

import argparse

import torch
from torchvision.ops import batched_nms

from detforge.postprocess import batched_soft_nms
from timing import cpu_summary, interleaved_median_times  # benchmarks/timing.py, beside this script


def candidates(n: int, num_classes: int, seed: int = 0, size: float = 640.0):
    """``n`` xyxy boxes clustered around ``n // 10`` objects, their scores and class labels."""
    gen = torch.Generator().manual_seed(seed)
    objects = max(1, n // 10)
    centre = torch.rand(objects, 2, generator=gen) * size
    wh = 10 + torch.rand(objects, 2, generator=gen) * 60
    which = torch.randint(0, objects, (n,), generator=gen)
    c = centre[which] + 0.1 * wh[which] * torch.randn(n, 2, generator=gen)
    half = wh[which] * (1 + 0.15 * torch.randn(n, 2, generator=gen)).clamp(min=0.3) / 2
    boxes = torch.cat([c - half, c + half], 1).clamp(0, size)
    return boxes, torch.rand(n, generator=gen), torch.randint(0, num_classes, (n,), generator=gen)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boxes", type=int, default=1000)
    parser.add_argument("--classes", type=int, nargs="+", default=[1, 5, 80])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--iou", type=float, default=0.5, help="hard NMS IoU and soft-NMS linear threshold")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(cpu_summary())
    print(f"{args.boxes} boxes, median of {args.repeats} interleaved calls (ms)")
    print(f"{'classes':>8} {'hard':>8} {'gaussian':>9} {'linear':>8} {'g/hard':>7} {'l/hard':>7}")
    method_args = (0.5, args.iou, 0.05)  # sigma, linear IoU threshold, score threshold
    for num_classes in args.classes:
        boxes, scores, labels = candidates(args.boxes, num_classes)
        times = interleaved_median_times(
            {
                "hard": lambda b=boxes, s=scores, g=labels: batched_nms(b, s, g, args.iou),
                "gaussian": lambda b=boxes, s=scores, g=labels: batched_soft_nms(
                    b, s, g, "gaussian", *method_args
                ),
                "linear": lambda b=boxes, s=scores, g=labels: batched_soft_nms(
                    b, s, g, "linear", *method_args
                ),
            },
            args.repeats,
        )
        hard, gauss, linear = times["hard"], times["gaussian"], times["linear"]
        print(
            f"{num_classes:>8} {hard * 1e3:8.2f} {gauss * 1e3:9.2f} {linear * 1e3:8.2f} "
            f"{gauss / hard:7.1f} {linear / hard:7.1f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
