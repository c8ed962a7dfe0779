"""``detforge data``: data set utilities.

``detforge data synth --out DIR --format coco|voc|yolo`` writes the built-in synthetic shapes data set to disk
(a train split with seed ``--seed`` and a val split with seed ``--seed + 1``, the same images ``--data
synthetic`` trains and validates on), so any tool that reads COCO, VOC or YOLO can use it.
"""

from __future__ import annotations

import argparse
import sys

HELP = "data set utilities: `detforge data synth --out DIR --format coco|voc|yolo`"

FORMATS = ("coco", "voc", "yolo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="detforge data", description="data set utilities")
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    synth = sub.add_parser("synth", help="write the synthetic shapes data set as COCO, VOC or YOLO")
    synth.add_argument("--out", required=True, help="output folder (created if missing)")
    synth.add_argument("--format", required=True, choices=FORMATS, help="annotation format")
    synth.add_argument("--num-images", type=int, default=512, help="training images (default 512)")
    synth.add_argument(
        "--val-images", type=int, default=None, help="validation images (default: max(num_images // 4, 32))"
    )
    synth.add_argument("--image-size", type=int, default=256, help="image side in pixels (default 256)")
    synth.add_argument("--num-classes", type=int, default=5, help="shape classes, 1 to 8 (default 5)")
    synth.add_argument("--seed", type=int, default=0, help="train seed; val uses seed + 1 (default 0)")
    synth.add_argument(
        "--mode", choices=("rgb", "thermal"), default="rgb", help="colour or 1-channel thermal"
    )
    synth.add_argument(
        "--image-format", choices=("png", "jpg"), default="png", help="image files (default png)"
    )
    return parser


def synth(args: argparse.Namespace) -> int:
    from detforge.data.synthetic import SyntheticShapes
    from detforge.data.writers import write_coco, write_voc, write_yolo

    if args.num_images < 1:
        raise SystemExit(f"detforge data synth: --num-images must be >= 1, got {args.num_images}")
    val_images = args.val_images if args.val_images is not None else max(args.num_images // 4, 32)
    writer = {"coco": write_coco, "voc": write_voc, "yolo": write_yolo}[args.format]
    for split, count, seed in (("train", args.num_images, args.seed), ("val", val_images, args.seed + 1)):
        if count < 1:
            continue
        try:
            dataset = SyntheticShapes(
                num_images=count,
                image_size=args.image_size,
                num_classes=args.num_classes,
                seed=seed,
                mode=args.mode,
            )
        except ValueError as err:
            print(f"detforge data synth: {err}", file=sys.stderr)
            return 2
        path = writer(dataset, args.out, split=split, image_format=args.image_format)
        print(f"{split}: {count} images -> {path}")
    return 0


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.action == "synth":
        return synth(args)
    parser.print_help()
    return 2
