"""COCO bbox evaluation speed: detforge's COCOEvaluator vs pycocotools vs faster-coco-eval, same data, one run.

    uv run python benchmarks/coco_eval.py                 # 5000 images, 80 classes, ~7 GT / 100 dets per image
    uv run python benchmarks/coco_eval.py --images 500    # quicker

Each evaluator goes from the same in-memory COCO dict and results list to the 12 stats (index building,
results loading, evaluate, accumulate, summarize), in a fresh forked process so its peak memory can be
read on its own (peak RSS above the process's size at the start). Prints median wall and CPU seconds (CPU
time is the steadier figure on a shared machine), ratios and peak memory, checks that the stats agree with pycocotools to 1e-9, and exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import multiprocessing as mp
import statistics
import time

import numpy as np

IMAGE_W, IMAGE_H = 640, 480


def make_data(num_images: int, num_classes: int, seed: int = 0) -> tuple[dict, list]:
    """A deterministic COCO-like data set: ~7 boxes per image of all sizes, 1% crowds, and 100 detections per
    image (a few jittered copies of each object, mostly of the right class, then random boxes)."""
    rng = np.random.default_rng(seed)
    cat_ids = np.sort(rng.choice(np.arange(1, 91), num_classes, replace=False))
    images = [{"id": int(i), "width": IMAGE_W, "height": IMAGE_H} for i in range(1, num_images + 1)]
    n_gt = np.clip(rng.poisson(7, num_images), 0, 30)
    g_img = np.repeat(np.arange(1, num_images + 1), n_gt)
    g = len(g_img)
    wh = np.exp(rng.uniform(np.log(4), np.log(400), (g, 2)))
    wh = np.minimum(wh, [IMAGE_W - 1, IMAGE_H - 1])
    xy = rng.uniform(0, 1, (g, 2)) * ([IMAGE_W, IMAGE_H] - wh)
    g_box = np.round(np.concatenate([xy, wh], 1), 2)
    g_cat = cat_ids[rng.integers(0, num_classes, g)]
    g_area = np.round(g_box[:, 2] * g_box[:, 3] * rng.uniform(0.6, 1.0, g), 2)
    g_crowd = rng.random(g) < 0.01
    annotations = [
        {
            "id": i + 1,
            "image_id": int(im),
            "category_id": int(c),
            "bbox": b.tolist(),
            "area": float(a),
            "iscrowd": int(cr),
        }
        for i, (im, c, b, a, cr) in enumerate(zip(g_img, g_cat, g_box, g_area, g_crowd))
    ]
    # Detections: 3 jittered copies per object (85% right class), then random boxes up to 100 per image.
    copies = 3
    j_src = np.repeat(np.arange(g), copies)
    j_box = g_box[j_src] * rng.normal(1.0, 0.08, (len(j_src), 4)) + rng.normal(0, 2, (len(j_src), 4))
    j_box[:, 2:] = np.maximum(j_box[:, 2:], 1.0)
    j_cat = np.where(
        rng.random(len(j_src)) < 0.85, g_cat[j_src], cat_ids[rng.integers(0, num_classes, len(j_src))]
    )
    j_img = g_img[j_src]
    j_score = rng.uniform(0.3, 1.0, len(j_src))
    n_rand = np.maximum(100 - n_gt * copies, 0)
    r_img = np.repeat(np.arange(1, num_images + 1), n_rand)
    r = len(r_img)
    r_wh = np.exp(rng.uniform(np.log(4), np.log(300), (r, 2)))
    r_box = np.concatenate(
        [rng.uniform(0, 1, (r, 2)) * ([IMAGE_W, IMAGE_H] - np.minimum(r_wh, 300)), r_wh], 1
    )
    r_cat = cat_ids[rng.integers(0, num_classes, r)]
    r_score = rng.uniform(0.0, 0.6, r)
    d_img = np.concatenate([j_img, r_img])
    d_box = np.round(np.concatenate([j_box, r_box]), 2)
    d_cat = np.concatenate([j_cat, r_cat])
    d_score = np.round(np.concatenate([j_score, r_score]), 3)  # 3 decimals: plenty of score ties
    order = np.lexsort((-d_score, d_img))
    results = [
        {"image_id": int(im), "category_id": int(c), "bbox": b.tolist(), "score": float(s)}
        for im, c, b, s in zip(d_img[order], d_cat[order], d_box[order], d_score[order])
    ]
    categories = [{"id": int(c), "name": f"class{c}"} for c in cat_ids]
    return {"images": images, "annotations": annotations, "categories": categories}, results


def run_detforge(gt: dict, results: list) -> np.ndarray:
    from detforge.metrics import evaluate_coco_files

    return evaluate_coco_files(gt, results).stats


def run_pycocotools(gt: dict, results: list) -> np.ndarray:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        ev = COCOeval(coco_gt, coco_gt.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.asarray(ev.stats)


def run_faster_coco_eval(gt: dict, results: list) -> np.ndarray:
    from faster_coco_eval import COCO, COCOeval_faster

    coco_gt = COCO(gt)
    ev = COCOeval_faster(coco_gt, coco_gt.loadRes(results), "bbox", print_function=lambda *a, **k: None)
    ev.evaluate()
    ev.accumulate()
    with contextlib.redirect_stdout(io.StringIO()):
        ev.summarize()
    return np.asarray(ev.stats[:12])


RUNNERS = {"detforge": run_detforge, "pycocotools": run_pycocotools, "faster-coco-eval": run_faster_coco_eval}


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _child(name: str, gt: dict, results: list, conn) -> None:
    # Fresh copies outside the timed region: pycocotools' loadRes writes into the result dicts.
    gt, results = copy.deepcopy(gt), copy.deepcopy(results)
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak-RSS counter to the current size
    start_rss = _rss_kib("VmRSS")
    t0, c0 = time.perf_counter(), time.process_time()
    stats = RUNNERS[name](gt, results)
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    peak_mib = (_rss_kib("VmHWM") - start_rss) / 1024
    conn.send((seconds, cpu_seconds, peak_mib, np.asarray(stats, np.float64)))
    conn.close()


def measure(name: str, gt: dict, results: list, repeats: int) -> tuple[float, float, float, np.ndarray]:
    """Median wall seconds, median CPU seconds (all threads), max peak MiB, stats."""
    ctx = mp.get_context("fork")
    times, cpu, peaks, stats = [], [], [], None
    for _ in range(repeats):
        parent, child = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_child, args=(name, gt, results, child))
        proc.start()
        seconds, cpu_seconds, peak, stats = parent.recv()
        proc.join()
        times.append(seconds)
        cpu.append(cpu_seconds)
        peaks.append(peak)
    return statistics.median(times), statistics.median(cpu), max(peaks), stats


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs of detforge and faster-coco-eval (median)"
    )
    parser.add_argument("--ref-repeats", type=int, default=1, help="runs of pycocotools (median)")
    args = parser.parse_args()

    # Import every library before forking so that no evaluator's time or memory includes imports.
    import faster_coco_eval  # noqa: F401
    import pycocotools.cocoeval  # noqa: F401

    import detforge.metrics  # noqa: F401

    np.ma.masked_array  # numpy imports numpy.ma lazily on first use  # noqa: B018

    t0 = time.perf_counter()
    gt, results = make_data(args.images, args.classes)
    print(
        f"data: {args.images} images, {args.classes} classes, {len(gt['annotations'])} boxes, "
        f"{len(results)} detections (built in {time.perf_counter() - t0:.1f}s)"
    )
    measured = {}
    for name in ("detforge", "faster-coco-eval", "pycocotools"):
        reps = args.ref_repeats if name == "pycocotools" else args.repeats
        measured[name] = measure(name, gt, results, reps)
        sec, cpu, peak, _ = measured[name]
        print(
            f"{name:>17}: {sec:8.2f} s wall  {cpu:8.2f} s CPU (median of {reps})   peak memory {peak:8.1f} MiB"
        )
    ours, ref, fast = (measured[k] for k in ("detforge", "pycocotools", "faster-coco-eval"))
    for label, i in (("wall", 0), ("CPU", 1)):
        print(
            f"speed-up ({label}): {ref[i] / ours[i]:.2f}x vs pycocotools, {fast[i] / ours[i]:.2f}x vs "
            f"faster-coco-eval (faster-coco-eval vs pycocotools: {ref[i] / fast[i]:.2f}x)"
        )
    diff = float(np.max(np.abs(ours[3] - ref[3])))
    diff_fast = float(np.max(np.abs(fast[3] - ref[3])))
    print("stats (pycocotools):", np.array2string(ref[3], precision=6, max_line_width=200))
    print(
        f"max |detforge - pycocotools| = {diff:.3g}   max |faster-coco-eval - pycocotools| = {diff_fast:.3g}"
    )
    assert diff <= 1e-9, f"detforge stats differ from pycocotools by {diff}"
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
