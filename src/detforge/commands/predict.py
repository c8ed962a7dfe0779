"""``detforge predict --ckpt C SOURCE... --out DIR``: detect objects in images, folders or globs.

For every image it writes a copy with the boxes drawn (``DIR/<name>.png``) and, for all of them,
``DIR/predictions.json``: one record per image with its file, (h, w) and detections (``box`` xyxy pixels of
the original image, ``score``, ``label``, ``class_name``).

``--slice 512 --overlap 0.2`` runs sliced inference (:func:`detforge.slicing.sliced_predict`): each image is
cut into overlapping tiles at its own resolution, the tiles run ``--batch`` at a time, and the duplicates
cut at tile borders are merged (``--merge nms|nmm --match-metric ios|iou --match-thresh 0.5``);
``--full-image`` adds a whole-image pass at ``--imgsz`` for large objects.

``--engine onnxruntime`` runs the network in onnxruntime (:mod:`detforge.engines`), with the same pre- and
post-processing: ``--weights model.onnx`` runs that exported file (``detforge export``), ``--ckpt C`` a cached
export beside the checkpoint (``<stem>.<imgsz>.onnx``, made on first use).
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
from pathlib import Path

HELP = "run a checkpoint on images, folders or globs; draw boxes and write JSON"

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")


def collect_images(sources: list[str]) -> list[Path]:
    """Image files named by ``sources`` (files, folders searched recursively, glob patterns), sorted within
    each source and without duplicates. A source that matches nothing raises
    :class:`~detforge.errors.MissingFileError` (a ``FileNotFoundError``) naming it."""
    from detforge.errors import MissingFileError

    found: list[Path] = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            matches = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        elif path.is_file():
            matches = [path]
        else:
            matches = sorted(Path(p) for p in glob.glob(source, recursive=True) if Path(p).is_file())
            matches = [p for p in matches if p.suffix.lower() in IMAGE_SUFFIXES]
        if not matches:
            raise MissingFileError(f"no images found for {source!r}")
        found += matches
    seen: set[Path] = set()
    return [p for p in found if not (p.resolve() in seen or seen.add(p.resolve()))]


def choose_conf(flag: float | None, best_conf: float | None) -> tuple[float, str]:
    """The score threshold and the log line saying where it comes from: ``--conf`` when given, else the
    checkpoint's F1-best confidence (``ObjectDetector.best_conf``), else :data:`detforge.metrics.f1.DEFAULT_CONF`."""
    from detforge.metrics.f1 import DEFAULT_CONF

    if flag is not None:
        return float(flag), f"conf {flag:g}: from --conf"
    if best_conf is not None:
        return float(best_conf), (
            f"conf {best_conf:.4g}: the F1-best confidence of the checkpoint's validation (--conf to change)"
        )
    why = "the default, no F1-best confidence in the model (--conf to change)"
    return DEFAULT_CONF, f"conf {DEFAULT_CONF:g}: {why}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="detforge predict", description=__doc__.splitlines()[0])
    parser.add_argument("sources", nargs="+", help="image files, folders or glob patterns")
    parser.add_argument("--ckpt", default=None, help="ObjectDetector checkpoint (best.ckpt / last.ckpt)")
    parser.add_argument("--model", default=None, help="a registered model, with --weights instead of --ckpt")
    parser.add_argument(
        "--weights",
        default=None,
        help="the model's named weights (coco) or a file in their layout; a path ending in .onnx is an "
        "exported file (with --engine onnxruntime, no --model)",
    )
    parser.add_argument(
        "--engine",
        default="torch",
        help="torch (default: eager PyTorch) or onnxruntime (--weights FILE.onnx, or --ckpt: a cached export)",
    )
    parser.add_argument("--out", default="runs/predict", help="output folder (default runs/predict)")
    parser.add_argument(
        "--imgsz", type=int, default=None, help="network input size (default: the training size)"
    )
    parser.add_argument(
        "--conf",
        type=float,
        default=None,
        help="score threshold for drawing and JSON (default: the checkpoint's F1-best validation confidence, "
        "else 0.25)",
    )
    parser.add_argument("--batch", type=int, default=8, help="images per forward pass")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--no-draw", action="store_true", help="only write predictions.json")
    parser.add_argument(
        "--no-fold-batchnorm",
        action="store_true",
        help="keep BatchNorm layers as trained (default: folded into their convolutions, a few %% faster)",
    )
    from detforge.slicing.predict import add_slicing_arguments

    add_slicing_arguments(parser)
    return parser


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from detforge.engines import is_onnx_file, parse_engine_names

    (engine_name,) = parse_engine_names(args.engine)  # an unknown engine: one line and exit 2
    named = args.weights is not None and not is_onnx_file(args.weights)
    if (args.ckpt is None) == (args.weights is None) or (args.model is None) == named:
        parser.error(
            "give --ckpt CKPT, --model NAME --weights W (e.g. --model fcos_resnet50_fpn --weights coco), or "
            "--weights FILE.onnx --engine onnxruntime"
        )
    from detforge.engine.threads import configure_threads

    configure_threads()
    import torch

    from detforge.data.transforms import build_val_transforms
    from detforge.engine.callbacks import atomic_write, draw_predictions
    from detforge.engine.memory_format import choose_memory_formats
    from detforge.engine.validate import uses_own_preprocess
    from detforge.engines import engine_detections, load_command_detector, open_engine
    from detforge.errors import InvalidValueError
    from detforge.io import load_image_uint8
    from detforge.models.fold_batchnorm import fold_batchnorm
    from detforge.slicing.predict import sliced_predict, slicing_options
    from detforge.targets import to_original_size

    files = collect_images(args.sources)
    # a missing or corrupt checkpoint, a bad --device: one line and exit 2 (detforge.cli)
    model = load_command_detector(args.ckpt, args.model, args.weights, args.device)
    conf, conf_source = choose_conf(args.conf, getattr(model, "best_conf", None))
    print(f"detforge: {conf_source}", file=sys.stderr)
    own_preprocess = uses_own_preprocess(model)  # named weights: their resize, on the images as they are
    onnx_file = args.weights if is_onnx_file(args.weights) else None
    if engine_name == "onnxruntime" and (own_preprocess or args.slice is not None):
        why = "--slice" if args.slice is not None else "named weights with their own pre-processing"
        raise InvalidValueError(f"--engine onnxruntime: {why} runs with --engine torch only")
    if engine_name == "torch" and not args.no_fold_batchnorm and onnx_file is None:
        print(
            f"detforge: {fold_batchnorm(model.model)} BatchNorm layers folded into their convolutions",
            file=sys.stderr,
        )
    imgsz = (
        args.imgsz or model.hparams.get("imgsz") or max(getattr(model.model, "default_input_size", (640,)))
    )
    transform = build_val_transforms(int(imgsz))
    slicing = slicing_options(args, full_image_size=int(imgsz))
    engine = open_engine(
        engine_name,
        model,
        int(imgsz),
        ckpt=args.ckpt,
        onnx=onnx_file,
        log=lambda line: print(f"detforge: {line}", file=sys.stderr),
    )
    # channels-last or NCHW, whichever predicts faster here (measured once, cached)
    if slicing is None and not own_preprocess and engine_name == "torch":
        batch_shape = (min(args.batch, len(files)), model.hparams.in_chans, int(imgsz), int(imgsz))
        for line in choose_memory_formats(model.model, batch_shape, train=False):
            print(f"detforge: {line}", file=sys.stderr)
    mode = "L" if model.hparams.in_chans == 1 else "RGB"
    names = model.class_names
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    used_names: set[str] = set()
    skipped: list[Path] = []  # unreadable files: named as met, counted in the summary, exit 1
    for start in range(0, len(files), args.batch):
        chunk, originals, images, targets = [], [], [], []
        for path in files[start : start + args.batch]:
            try:
                raw = load_image_uint8(path, mode)  # [C, H, W] uint8
            except (OSError, ValueError) as err:  # empty, truncated, not an image
                skipped.append(path)
                print(f"detforge predict: skipped {path}: {str(err).splitlines()[0]}", file=sys.stderr)
                continue
            chunk.append(path)
            h, w = raw.shape[-2:]
            empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
            image, target = transform(raw, empty)
            target["orig_size"] = torch.tensor([h, w])
            originals.append(raw)
            images.append(image)
            targets.append(target)
        if not chunk:
            continue
        if slicing is not None:  # tiles of the originals, boxes already in their pixels
            full = [raw.to(model.device).float() / 255 for raw in originals]  # [C, H, W] each
            preds = sliced_predict(model, full, batch_size=args.batch, **slicing)
        elif own_preprocess:  # e.g. torchvision's shortest side 800, boxes back in the originals' pixels
            preds = model.model.predict([raw.to(model.device).float() / 255 for raw in originals])
        else:
            batch = torch.stack(images).to(model.device)  # [B, C, S, S]
            sizes = [tuple(int(v) for v in t["size"]) for t in targets]
            preds = to_original_size(engine_detections(engine, model.model, batch, sizes), targets)
        for path, raw, pred in zip(chunk, originals, preds, strict=True):
            keep = pred["scores"] >= conf
            pred = {k: v[keep].cpu() for k, v in pred.items()}
            dets = [
                {
                    "box": [round(float(c), 2) for c in box],
                    "score": round(float(score), 4),
                    "label": int(label),
                    "class_name": names[int(label)] if names else str(int(label)),
                }
                for box, score, label in zip(pred["boxes"], pred["scores"], pred["labels"], strict=True)
            ]
            records.append(
                {
                    "file": str(path),
                    "height": int(raw.shape[-2]),
                    "width": int(raw.shape[-1]),
                    "detections": dets,
                }
            )
            if not args.no_draw:
                from PIL import Image

                drawn = draw_predictions(raw.float() / 255, pred, names, score_thresh=conf)
                array = drawn.permute(1, 2, 0).numpy()  # [H, W, 3]
                name = path.stem
                n = 2
                while name in used_names:  # same file name in two folders
                    name, n = f"{path.stem}_{n}", n + 1
                used_names.add(name)
                atomic_write(
                    out / f"{name}.png", lambda tmp, a=array: Image.fromarray(a).save(tmp, format="PNG")
                )
    text = json.dumps(records, indent=1)
    atomic_write(out / "predictions.json", lambda tmp: Path(tmp).write_text(text))
    total = sum(len(r["detections"]) for r in records)
    unread = f", {len(skipped)} skipped (unreadable)" if skipped else ""
    print(f"{len(records)} images, {total} detections (score >= {conf:.4g}){unread} -> {out}")
    return 1 if skipped else 0
