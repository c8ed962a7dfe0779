"""Batched FCOSAssigner against the per-image, per-level loop that detectors commonly use to build targets.

The loop (written below, the way autotimm's ObjectDetector computes FCOS targets) broadcasts every location
of a level against every GT of one image. ``FCOSAssigner`` only visits the grid cells each box can cover on
the levels its size allows. Both follow the same rules, and the script checks that they give identical
assignments before timing them.

Run: ``uv run python benchmarks/assign_fcos.py`` (options: ``--repeats``, ``--threads``, ``--device``).
Prints, per GT count, the median time of each (over ``--repeats`` runs, interleaved), the speed-up, and the
peak extra memory of each call (outputs included): on CPU the growth of peak RSS (VmHWM, reset through
/proc/self/clear_refs) while one call runs in a fresh Python process; on CUDA ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import subprocess
import sys
import time

import torch

from detforge.assigners import FCOS_P3_P7_RANGES, FCOS_P3_P7_STRIDES, FCOSAssigner, FCOSTargets

BATCH = 16
IMAGE = 640
GT_COUNTS = (20, 100)


def loop_reference(feat_sizes, strides, ranges, gt_boxes, gt_labels, gt_mask) -> FCOSTargets:
    """Per image, per level: broadcast the level's locations [HW] against the image's GTs [G]."""
    out_labels, out_ltrb, out_ctr, out_matched = [], [], [], []
    for boxes, labels, mask in zip(gt_boxes, gt_labels, gt_mask):
        boxes, labels = boxes[mask], labels[mask]  # [G, 4], [G]
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])  # [G]
        lv_labels, lv_ltrb, lv_ctr, lv_matched = [], [], [], []
        for (h, w), stride, (lo, hi) in zip(feat_sizes, strides, ranges):
            ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
            px = ((xs.reshape(-1).float() + 0.5) * stride)[:, None]  # [HW, 1]
            py = ((ys.reshape(-1).float() + 0.5) * stride)[:, None]  # [HW, 1]
            ltrb = torch.stack(
                [px - boxes[:, 0], py - boxes[:, 1], boxes[:, 2] - px, boxes[:, 3] - py], dim=-1
            )  # [HW, G, 4]
            reach = ltrb.amax(-1)  # [HW, G]
            ok = (ltrb.amin(-1) > 0) & (reach >= lo) & (reach <= hi)  # [HW, G]
            cand_area = torch.where(ok, area[None, :], torch.full((), math.inf))  # [HW, G]
            if boxes.shape[0] == 0:
                best_area, best = torch.full((h * w,), math.inf), torch.zeros(h * w, dtype=torch.int64)
            else:
                best_area, best = cand_area.min(dim=1)  # [HW]; the first (lowest) index among equal areas
            pos = torch.isfinite(best_area)  # [HW]
            chosen = ltrb[torch.arange(h * w), best] if boxes.shape[0] else torch.zeros(h * w, 4)  # [HW, 4]
            lr, tb = chosen[:, 0::2], chosen[:, 1::2]  # [HW, 2]
            ctr = ((lr.amin(-1) / lr.amax(-1)) * (tb.amin(-1) / tb.amax(-1))).sqrt()  # [HW]
            lv_labels.append(torch.where(pos, labels[best] if boxes.shape[0] else best, -1))
            lv_matched.append(torch.where(pos, mask.nonzero()[:, 0][best] if boxes.shape[0] else best, -1))
            lv_ltrb.append(torch.where(pos[:, None], chosen, 0.0))
            lv_ctr.append(torch.where(pos, ctr, 0.0))
        out_labels.append(torch.cat(lv_labels))
        out_ltrb.append(torch.cat(lv_ltrb))
        out_ctr.append(torch.cat(lv_ctr))
        out_matched.append(torch.cat(lv_matched))
    return FCOSTargets(
        torch.stack(out_labels), torch.stack(out_ltrb), torch.stack(out_ctr), torch.stack(out_matched)
    )


def make_batch(num_gt: int, seed: int = 0):
    """Random boxes with log-uniform sides (4..600 px) inside a 640 x 640 image, some at the border."""
    gen = torch.Generator().manual_seed(seed)
    side = torch.exp(torch.empty(BATCH, num_gt, 2).uniform_(math.log(4), math.log(600), generator=gen))
    side = side.round()  # integer sizes make exact ties and range-bound hits common
    corner = (torch.rand(BATCH, num_gt, 2, generator=gen) * (IMAGE - side)).floor()
    boxes = torch.cat([corner, corner + side], -1)  # [B, G, 4]
    labels = torch.randint(0, 80, (BATCH, num_gt), generator=gen)  # [B, G]
    mask = torch.ones(BATCH, num_gt, dtype=torch.bool)
    mask[0, num_gt // 2 :] = False  # different GT counts per image
    return boxes, labels, mask


def assert_identical(ours: FCOSTargets, ref: FCOSTargets) -> None:
    assert torch.equal(ours.labels, ref.labels), "labels differ"
    assert torch.equal(ours.matched_gt, ref.matched_gt), "matched_gt differs"
    assert torch.equal(ours.ltrb, ref.ltrb), "ltrb differs"
    torch.testing.assert_close(ours.centerness, ref.centerness, rtol=1e-6, atol=1e-6)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _measure_peak_rss(which: str, num_gt: int) -> int:
    """Peak RSS growth (bytes) of one call, in this fresh process; Linux only."""
    _runner(which, 2, "cpu")()  # first-call allocations (thread pools, caches) do not count
    run = _runner(which, num_gt, "cpu")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak-RSS mark (VmHWM) to the current RSS
    before = _status_kib("VmRSS")
    result = run()
    peak = _status_kib("VmHWM")
    del result
    return (peak - before) * 1024


def _runner(which: str, num_gt: int, device: str):
    boxes, labels, mask = (t.to(device) for t in make_batch(num_gt))
    feat_sizes = [(math.ceil(IMAGE / s), math.ceil(IMAGE / s)) for s in FCOS_P3_P7_STRIDES]
    if which == "ours":
        assigner = FCOSAssigner(FCOS_P3_P7_STRIDES, FCOS_P3_P7_RANGES)
        return lambda: assigner(feat_sizes, boxes, labels, mask)
    return lambda: loop_reference(feat_sizes, FCOS_P3_P7_STRIDES, FCOS_P3_P7_RANGES, boxes, labels, mask)


def peak_extra_memory(which: str, num_gt: int, threads: int, device: str) -> int:
    """Peak memory one call adds, outputs included: CUDA allocator peak, or peak RSS of a fresh process."""
    if device.startswith("cuda"):
        run = _runner(which, num_gt, device)
        run()
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        result = run()
        torch.cuda.synchronize()
        del result
        return torch.cuda.max_memory_allocated() - base
    command = [sys.executable, __file__, "--threads", str(threads), "--measure-memory", which, str(num_gt)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return int(done.stdout.split()[-1])


def timed(fn, device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: less noise)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--measure-memory", nargs=2, metavar=("WHICH", "NUM_GT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.measure_memory:
        print(_measure_peak_rss(args.measure_memory[0], int(args.measure_memory[1])))
        return 0
    feat_sizes = [(math.ceil(IMAGE / s), math.ceil(IMAGE / s)) for s in FCOS_P3_P7_STRIDES]
    num_points = sum(h * w for h, w in feat_sizes)
    print(
        f"FCOS assignment, batch {BATCH}, {IMAGE}x{IMAGE}, strides {FCOS_P3_P7_STRIDES} ({num_points} locations), "
        f"device {args.device}, {args.threads} thread(s), median of {args.repeats}, torch {torch.__version__}"
    )
    header = f"{'GT/img':>6} {'loop ms':>9} {'ours ms':>9} {'speed-up':>9} {'loop peak MB':>13} {'ours peak MB':>13} {'positives':>10}"
    print(header)
    for num_gt in GT_COUNTS:
        ours_fn = _runner("ours", num_gt, args.device)
        loop_fn = _runner("loop", num_gt, args.device)
        ours, ref = ours_fn(), loop_fn()  # also warm-up
        assert_identical(ours, ref)
        ours_t, loop_t = [], []
        for _ in range(args.repeats):
            loop_t.append(timed(loop_fn, args.device))
            ours_t.append(timed(ours_fn, args.device))
        loop_ms, ours_ms = statistics.median(loop_t) * 1e3, statistics.median(ours_t) * 1e3
        loop_mb = peak_extra_memory("loop", num_gt, args.threads, args.device) / 2**20
        ours_mb = peak_extra_memory("ours", num_gt, args.threads, args.device) / 2**20
        print(
            f"{num_gt:>6} {loop_ms:>9.1f} {ours_ms:>9.1f} {loop_ms / ours_ms:>8.1f}x {loop_mb:>13.1f} "
            f"{ours_mb:>13.1f} {int((ours.labels >= 0).sum()):>10}"
        )
    print("assignments identical to the loop reference: yes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
