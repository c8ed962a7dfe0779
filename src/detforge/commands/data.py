"""``detforge data``: data set utilities.

``detforge data synth --out DIR --format coco|voc|yolo|widerface`` writes the built-in synthetic shapes data set
to disk (a train split with seed ``--seed`` and a val split with seed ``--seed + 1``, the same images ``--data
synthetic`` trains and validates on), so any tool that reads COCO, VOC, YOLO or WIDER FACE can use it.
``--format widerface`` draws one shape class (circles, the "faces") unless ``--num-classes`` says otherwise,
and ``--mode sequence`` writes video frames (one WIDER event folder per sequence). ``--mode dense`` writes the
crowded small-object scenes of ``--data synthetic-dense`` (images of 512 to 1024 px, ``--image-size`` unused).
``--data synthetic-video[:N]`` writes the synthetic video (N train sequences, seed ``--seed``; ``max(N // 2, 4)``
val sequences, seed ``--seed + 1``; ``--num-images`` unused); with ``--format mot`` (which implies it) in the
MOT layout, ``OUT/<split>/<sequence>/{img1/, gt/gt.txt, seqinfo.ini}``, which ``--data mot:OUT`` reads.

``detforge data slice SRC OUT --slice 512 --overlap 0.2`` writes a tiled COCO copy of the data set spec ``SRC``
(``coco:ANN.json:IMAGES``, ``voc:DIR``, ``synthetic-dense:64``, ...): the tiles and box rule of sliced training
(:class:`detforge.data.sliced.SlicedDataset`), every non-empty tile and ``--empty-ratio`` empty tiles per
non-empty one (a fixed choice), one file per tile, for tools that train on tiles.
"""

from __future__ import annotations

import argparse
import sys

HELP = (
    "data set utilities: `detforge data synth --out DIR --format coco|voc|yolo|widerface|mot`, "
    "`detforge data slice SRC OUT --slice 512`"
)

FORMATS = ("coco", "voc", "yolo", "widerface", "mot")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="detforge data", description="data set utilities")
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    synth = sub.add_parser(
        "synth", help="write the synthetic shapes data set as COCO, VOC, YOLO, WIDER FACE or MOT"
    )
    synth.add_argument("--out", required=True, help="output folder (created if missing)")
    synth.add_argument("--format", required=True, choices=FORMATS, help="annotation format")
    synth.add_argument("--num-images", type=int, default=512, help="training images (default 512)")
    synth.add_argument(
        "--val-images", type=int, default=None, help="validation images (default: max(num_images // 4, 32))"
    )
    synth.add_argument("--image-size", type=int, default=256, help="image side in pixels (default 256)")
    synth.add_argument(
        "--num-classes", type=int, default=None, help="shape classes, 1 to 8 (default 5; 1 for widerface)"
    )
    synth.add_argument("--seed", type=int, default=0, help="train seed; val uses seed + 1 (default 0)")
    synth.add_argument(
        "--mode",
        choices=("rgb", "thermal", "sequence", "dense"),
        default="rgb",
        help="colour, 1-channel thermal, moving shapes in sequences of video frames, or dense: 20 to 80 "
        "objects of 6 to 40 px in 512 to 1024 px images (synthetic-dense)",
    )
    synth.add_argument(
        "--image-format", choices=("png", "jpg"), default="png", help="image files (default png)"
    )
    synth.add_argument(
        "--data",
        default=None,
        help="synthetic-video[:N]: write N train sequences of the synthetic video (the default of --format mot)",
    )
    cut = sub.add_parser("slice", help="write a tiled COCO copy of a data set (sliced training's tiles)")
    cut.add_argument("src", help="data set spec, e.g. coco:ANN.json:IMAGES or synthetic-dense:64")
    cut.add_argument("out", help="output folder (created if missing)")
    cut.add_argument("--slice", type=int, required=True, help="tile side in pixels")
    cut.add_argument("--overlap", type=float, default=0.2, help="overlap of neighbouring tiles (default 0.2)")
    cut.add_argument(
        "--min-area",
        type=float,
        default=0.5,
        help="keep a box in a tile when at least this fraction of its area is inside (default 0.5)",
    )
    cut.add_argument(
        "--empty-ratio", type=float, default=0.0, help="empty tiles per non-empty tile (default 0: none)"
    )
    cut.add_argument("--split", choices=("train", "val"), default="train", help="split to read and write")
    cut.add_argument("--image-format", choices=("png", "jpg"), default="png", help="tile files (default png)")
    return parser


def slice_command(args: argparse.Namespace) -> int:
    from detforge.data.mosaic import keep_uint8
    from detforge.data.sliced import SlicedDataset
    from detforge.data.spec import build_dataset
    from detforge.data.writers import write_coco

    try:
        dataset = build_dataset(args.src, split=args.split, transforms=keep_uint8)
        tiles = SlicedDataset(
            dataset,
            args.slice,
            overlap=args.overlap,
            min_area=args.min_area,
            empty_ratio=args.empty_ratio,
            seed=0,
            transforms=keep_uint8,
        )
    except ValueError as err:
        print(f"detforge data slice: {err}", file=sys.stderr)
        return 2
    path = write_coco(tiles, args.out, split=args.split, image_format=args.image_format)
    print(f"{args.split}: {len(dataset)} images -> {len(tiles)} tiles -> {path}")
    return 0


def _synth_video(args: argparse.Namespace, writer) -> int:
    from detforge.data.mot import write_mot_sequence
    from detforge.data.spec import parse_spec
    from detforge.data.synthetic_video import SyntheticVideo
    from detforge.errors import InvalidValueError

    kind, parts = parse_spec(args.data or "synthetic-video")
    if kind != "synthetic-video":
        raise InvalidValueError(f"synth --data takes synthetic-video[:N], got {args.data!r}")
    n = int(parts[0]) if parts else 8
    num_classes = args.num_classes if args.num_classes is not None else 1 if args.format == "widerface" else 5
    for split, count, seed in (("train", n, args.seed), ("val", max(n // 2, 4), args.seed + 1)):
        try:
            video = SyntheticVideo(count, image_size=args.image_size, num_classes=num_classes, seed=seed)
        except ValueError as err:
            print(f"detforge data synth: {err}", file=sys.stderr)
            return 2
        if args.format == "mot":
            for sequence in video.sequences():
                write_mot_sequence(sequence, f"{args.out}/{split}", image_format=args.image_format)
            path = f"{args.out}/{split}"
        else:
            path = writer(video, args.out, split=split, image_format=args.image_format)
        print(f"{split}: {count} sequences of {video.sequence_length} frames -> {path}")
    return 0


def synth(args: argparse.Namespace) -> int:
    from detforge.data.synthetic import SyntheticShapes
    from detforge.data.synthetic_dense import SyntheticDense
    from detforge.data.writers import write_coco, write_voc, write_widerface, write_yolo

    if args.num_images < 1:
        from detforge.errors import InvalidValueError

        raise InvalidValueError(f"synth --num-images must be >= 1, got {args.num_images}")
    val_images = args.val_images if args.val_images is not None else max(args.num_images // 4, 32)
    writers = {"coco": write_coco, "voc": write_voc, "yolo": write_yolo, "widerface": write_widerface}
    writer = writers.get(args.format)
    if args.format == "mot" or args.data is not None:
        return _synth_video(args, writer)
    num_classes = args.num_classes if args.num_classes is not None else 1 if args.format == "widerface" else 5
    for split, count, seed in (("train", args.num_images, args.seed), ("val", val_images, args.seed + 1)):
        if count < 1:
            continue
        try:
            if args.mode == "dense":
                dataset = SyntheticDense(num_images=count, num_classes=num_classes, seed=seed)
            else:
                dataset = SyntheticShapes(
                    num_images=count,
                    image_size=args.image_size,
                    num_classes=num_classes,
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
    if args.action == "slice":
        return slice_command(args)
    parser.print_help()
    return 2
