"""Small objects in large images on ``synthetic-dense``: plain resize vs sliced inference vs sliced training +
sliced inference, each with and without multi-scale training, per model; prints mAP@[.5:.95] and AP-small.

Each (model, training) pair trains once under the same budget (``--budget`` seconds of ``max_time``, or
``--epochs``), then is evaluated on the full-resolution validation images (``synthetic-dense`` val split,
COCO metrics in the images' pixels, up to 300 detections per image):

- ``resize``: trained on whole images letterboxed to ``--imgsz``; predicted the same way.
- ``sliced-infer``: the same weights, predicted by :func:`detforge.slicing.sliced_predict` (tiles of
  ``--slice`` px at native resolution, overlap ``--overlap``, NMS merge on IoS, whole-image pass added).
- ``sliced-train``: trained on ``--slice`` px tiles (``DetectionDataModule(slice=...)``, ``imgsz = slice``),
  predicted sliced.

``--multi-scale lo hi`` adds a multi-scale twin of each training; ``--nms-methods hard gaussian linear``
evaluates every row with each post-processing NMS (Soft-NMS on crowded data). One run, never beside another
benchmark:

    uv run python benchmarks/small_objects.py [--models detforge_n fcos_resnet18] [--train-images 256]
        [--val-images 32] [--imgsz 512] [--slice 512] [--budget 1800] [--multi-scale 0.5 1.5]
        [--nms-methods hard gaussian linear]

Smoke run (seconds): ``--models detforge_n --train-images 2 --val-images 2 --imgsz 128 --slice 128 --epochs 1
--limit-batches 2``.
"""

from __future__ import annotations

import argparse
import datetime
import time

import lightning as L
import torch
from torchvision.transforms.v2 import functional as TF

from detforge.data.datamodule import DetectionDataModule
from detforge.data.synthetic_dense import SyntheticDense
from detforge.engine.memory_format import cpu_name
from detforge.metrics import DetectionMAP
from detforge.models.detector import ObjectDetector
from detforge.slicing import sliced_predict


def train(model_name: str, sliced: bool, multi_scale: tuple[float, float] | None, args) -> ObjectDetector:
    imgsz = args.slice if sliced else args.imgsz
    data = DetectionDataModule(
        f"synthetic-dense:{args.train_images}",
        imgsz=imgsz,
        batch_size=args.batch_size,
        num_workers=0,
        photometric=False,
        scale_jitter=None if sliced else (0.75, 1.25),
        slice=args.slice if sliced else None,
        overlap=args.overlap,
        multi_scale=multi_scale,
        multi_scale_off_epochs=1 if multi_scale and args.epochs and args.epochs > 2 else 0,
        dataset_kwargs={"cache": True},
        seed=0,
    )
    model = ObjectDetector(
        model=model_name, num_classes=5, imgsz=imgsz, lr=args.lr, warmup_steps=50, compile_model=False, seed=0
    )
    trainer = L.Trainer(
        max_epochs=args.epochs or 1000,
        max_time=None if args.epochs else datetime.timedelta(seconds=args.budget),
        limit_train_batches=args.limit_batches,
        limit_val_batches=0,
        accelerator="auto",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        gradient_clip_val=10.0,
    )
    trainer.fit(model, data)
    return model.eval()


@torch.no_grad()
def evaluate(model: ObjectDetector, sliced: bool, args) -> dict[str, float]:
    metric = DetectionMAP(max_detection_thresholds=[10, 100, 300])
    val = SyntheticDense(args.val_images, seed=1)
    device = next(model.parameters()).device
    for i in range(len(val)):
        image, target = val[i]  # [3, H, W] full resolution
        image = image.to(device)
        if sliced:
            pred = sliced_predict(
                model, image, slice_size=args.slice, overlap=args.overlap, full_image_pass=True, batch_size=8
            )[0]
        else:
            h, w = image.shape[-2:]
            scale = args.imgsz / max(h, w)
            rh, rw = round(h * scale), round(w * scale)
            small = TF.resize(image, [rh, rw], antialias=True)
            batch = TF.pad(small, [0, 0, args.imgsz - rw, args.imgsz - rh], fill=114 / 255)[None]
            pred = model.predict(batch, [(rh, rw)])[0]
            pred["boxes"] = pred["boxes"] / torch.tensor([rw / w, rh / h, rw / w, rh / h], device=device)
        metric.update([{k: v.cpu() for k, v in pred.items()}], [target])
    stats = metric.compute()
    return {"map": float(stats["map"]), "map_small": float(stats["map_small"])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["detforge_n", "fcos_resnet18"])
    parser.add_argument("--train-images", type=int, default=256)
    parser.add_argument("--val-images", type=int, default=32)
    parser.add_argument("--imgsz", type=int, default=512, help="input size of the plain-resize training")
    parser.add_argument("--slice", type=int, default=512)
    parser.add_argument("--overlap", type=float, default=0.2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--budget", type=float, default=1800.0, help="training seconds per run")
    parser.add_argument("--epochs", type=int, default=None, help="train this many epochs instead of --budget")
    parser.add_argument("--limit-batches", type=int, default=None, help="training batches per epoch (smoke)")
    parser.add_argument("--multi-scale", type=float, nargs=2, default=(0.5, 1.5), metavar=("LO", "HI"))
    parser.add_argument("--no-multi-scale", action="store_true", help="skip the multi-scale twins")
    parser.add_argument("--no-plain", action="store_true", help="skip the trainings on resized whole images")
    parser.add_argument(
        "--nms-methods",
        nargs="+",
        default=["hard"],
        choices=["hard", "gaussian", "linear"],
        help="NMS per row",
    )
    args = parser.parse_args(argv)
    ms_options = [None] if args.no_multi_scale else [None, tuple(args.multi_scale)]
    print(
        f"CPU: {cpu_name()}, capability {torch.backends.cpu.get_cpu_capability()}, cuda: {torch.cuda.is_available()}"
    )
    print(
        f"synthetic-dense:{args.train_images}, val {args.val_images}, imgsz {args.imgsz}, slice {args.slice}"
    )
    rows = []
    for name in args.models:
        for ms in ms_options:
            for sliced_train in (True,) if args.no_plain else (False, True):
                start = time.perf_counter()
                model = train(name, sliced_train, ms, args)
                wall = time.perf_counter() - start
                infers = ("sliced-train",) if sliced_train else ("resize", "sliced-infer")
                for mode in infers:
                    for nms in args.nms_methods:
                        model.model.set_postprocess(nms_method=nms)
                        row = {"model": name, "mode": mode, "multi_scale": ms, "nms": nms, "train_s": wall}
                        start = time.perf_counter()
                        row.update(evaluate(model, mode != "resize", args))
                        row["eval_s"] = time.perf_counter() - start
                        rows.append(row)
                        print(row, flush=True)
    print("\n| model | mode | multi-scale | NMS | mAP | AP-small | train s | eval s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        ms = "-" if r["multi_scale"] is None else f"{r['multi_scale'][0]}-{r['multi_scale'][1]}"
        print(
            f"| {r['model']} | {r['mode']} | {ms} | {r['nms']} | {r['map']:.3f} | {r['map_small']:.3f} "
            f"| {r['train_s']:.0f} | {r['eval_s']:.0f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
