"""``detforge predict --ckpt C SOURCE... --out DIR``: detect objects in images, folders, globs or videos.

For every image it writes a copy with the boxes drawn (``DIR/<name>.png``) and, for all of them,
``DIR/predictions.json``: one record per image with its file, (h, w) and detections (``box`` xyxy pixels of
the original image, ``score``, ``label``, ``class_name``).

``--slice 512 --overlap 0.2`` runs sliced inference (:func:`detforge.slicing.sliced_predict`): each image is
cut into overlapping tiles at its own resolution, the tiles run ``--batch`` at a time, and the duplicates
cut at tile borders are merged (``--merge nms|nmm --match-metric ios|iou --match-thresh 0.5``);
``--full-image`` adds a whole-image pass at ``--imgsz`` for large objects.

A video source (a file such as ``clip.mp4``, a camera index ``0`` or a stream URL ``rtsp://...``) is read
frame by frame (:mod:`detforge.tracking.video`) and written as ``DIR/<name>.mp4`` with the boxes drawn; its
frames' records (with ``frame``, 1-based) join ``predictions.json``. ``detforge track`` adds track ids.

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

from detforge.commands.inference import add_model_arguments, prepare_inference
from detforge.commands.video_runs import run_videos, unique_name

HELP = "run a checkpoint on images, folders, globs or videos; draw boxes and write JSON"

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="detforge predict", description=__doc__.splitlines()[0])
    parser.add_argument("sources", nargs="+", help="image files, folders or glob patterns")
    add_model_arguments(parser)
    parser.add_argument("--out", default="runs/predict", help="output folder (default runs/predict)")
    parser.add_argument("--no-draw", action="store_true", help="only write predictions.json")
    from detforge.slicing.predict import add_slicing_arguments

    add_slicing_arguments(parser)
    return parser


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from detforge.tracking.video import is_video_source

    videos = [s for s in args.sources if is_video_source(s)]
    files = collect_images([s for s in args.sources if s not in videos]) if len(videos) < len(args.sources) else []
    from detforge.slicing.predict import sliced_predict, slicing_options

    if videos and args.slice is not None:
        parser.error("--slice runs on images, not on videos")
    started = prepare_inference(
        args,
        parser,
        batch=min(args.batch, max(len(files), 1)) if not videos else args.batch,
        torch_only="--slice" if args.slice is not None else None,
        memory_format=args.slice is None,
    )
    from detforge.engine.callbacks import atomic_write, draw_predictions
    from detforge.engines.pipeline import detection_records
    from detforge.io import load_image_uint8

    model, conf, names = started.detector, started.conf, started.class_names
    slicing = slicing_options(args, full_image_size=started.imgsz)
    mode = "L" if model.hparams.in_chans == 1 else "RGB"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records: list[dict] = []
    used_names: set[str] = set()
    skipped: list[Path] = []  # unreadable files: named as met, counted in the summary, exit 1
    for start in range(0, len(files), args.batch):
        chunk, originals = [], []
        for path in files[start : start + args.batch]:
            try:
                raw = load_image_uint8(path, mode)  # [C, H, W] uint8
            except (OSError, ValueError) as err:  # empty, truncated, not an image
                skipped.append(path)
                print(f"detforge predict: skipped {path}: {str(err).splitlines()[0]}", file=sys.stderr)
                continue
            chunk.append(path)
            originals.append(raw)
        if not chunk:
            continue
        if slicing is not None:  # tiles of the originals, boxes already in their pixels
            full = [raw.to(model.device).float() / 255 for raw in originals]  # [C, H, W] each
            preds = sliced_predict(model, full, batch_size=args.batch, **slicing)
        else:
            preds = started.pipeline(originals)
        for path, raw, pred in zip(chunk, originals, preds, strict=True):
            keep = pred["scores"] >= conf
            pred = {k: v[keep].cpu() for k, v in pred.items()}
            records.append(
                {
                    "file": str(path),
                    "height": int(raw.shape[-2]),
                    "width": int(raw.shape[-1]),
                    "detections": detection_records(pred, names),
                }
            )
            if not args.no_draw:
                from PIL import Image

                drawn = draw_predictions(raw.float() / 255, pred, names, score_thresh=conf)
                array = drawn.permute(1, 2, 0).numpy()  # [H, W, 3]
                name = unique_name(path.stem, used_names)
                atomic_write(
                    out / f"{name}.png", lambda tmp, a=array: Image.fromarray(a).save(tmp, format="PNG")
                )
    problems = run_videos(videos, started, args, out, records, used_names, tracker_name=None)
    text = json.dumps(records, indent=1)
    atomic_write(out / "predictions.json", lambda tmp: Path(tmp).write_text(text))
    total = sum(len(r["detections"]) for r in records)
    unread = f", {len(skipped)} skipped (unreadable)" if skipped else ""
    what = f"{len(files) - len(skipped)} images" + (f", {len(videos)} videos" if videos else "")
    print(f"{what}, {total} detections (score >= {conf:.4g}){unread} -> {out}")
    return 1 if skipped or problems else 0
