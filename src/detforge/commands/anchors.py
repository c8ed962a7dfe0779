"""``detforge anchors``: YOLO anchor sizes for a data set, k-means with the 1 - IoU distance on its training
boxes at the training input size; prints the anchors (smallest first) and their mean best IoU.

    detforge anchors --data synthetic:1024 --imgsz 128
    detforge anchors --data coco:ann.json:images --imgsz 416 --k 9

The printed ``--model.anchors`` value can be given to ``detforge train --model yolov3_...``; ``--model.anchors
auto`` computes the same anchors (seed 0) when training starts.
"""

from __future__ import annotations

import argparse
import json

HELP = "YOLO anchors for a data set: k-means (1 - IoU) on its training boxes at the input size"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="detforge anchors", description=HELP)
    parser.add_argument(
        "--data", required=True, help="data set spec, e.g. synthetic:1024 or coco:ANN.json:IMAGES"
    )
    parser.add_argument("--imgsz", type=int, default=416, help="training input side in pixels (default 416)")
    parser.add_argument("--k", type=int, default=9, help="number of anchors (default 9: three per scale)")
    parser.add_argument("--iters", type=int, default=300, help="most k-means iterations (default 300)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the k-means start (default 0)")
    parser.add_argument("--max-images", type=int, default=None, help="read at most this many training images")
    return parser


def compute_anchors(
    data: str, imgsz: int, k: int = 9, iters: int = 300, seed: int = 0, max_images: int | None = None
) -> tuple[list[list[float]], float, int]:
    """``(anchors [[w, h], ...] smallest first, mean best IoU, number of boxes)`` of ``data``'s training split
    at ``imgsz`` (the data as ``detforge train --data data --imgsz imgsz`` reads it, before augmentation)."""
    from detforge.anchors import dataset_boxes_wh, kmeans_anchors
    from detforge.data.datamodule import DetectionDataModule

    datamodule = DetectionDataModule(data, imgsz=imgsz, num_workers=0, augment=False)
    wh = dataset_boxes_wh(datamodule._make_train(), imgsz, max_images)
    anchors, mean_iou = kmeans_anchors(wh, k=k, iters=iters, seed=seed)
    return [[round(float(v), 1) for v in pair] for pair in anchors], mean_iou, int(wh.shape[0])


def main(argv: list[str]) -> int:
    from detforge.errors import InvalidValueError, UserError

    args = build_parser().parse_args(argv)
    if args.imgsz < 1:
        raise InvalidValueError(f"--imgsz must be >= 1, got {args.imgsz}")
    try:
        anchors, mean_iou, count = compute_anchors(
            args.data, args.imgsz, args.k, args.iters, args.seed, args.max_images
        )
    except ValueError as err:  # k-means' checks of --k against the boxes found (the data's errors name files)
        if isinstance(err, UserError):
            raise
        raise InvalidValueError(f"--k {args.k}: {err}") from err
    print(f"{count} training boxes of {args.data} at {args.imgsz} px, k-means (1 - IoU), k={args.k}")
    print(f"{'anchor':>6}  {'w':>7}  {'h':>7}")
    for i, (w, h) in enumerate(anchors):
        print(f"{i:>6}  {w:>7.1f}  {h:>7.1f}")
    print(f"mean best IoU: {mean_iou:.4f}")
    print(f"--model.anchors '{json.dumps(anchors)}'")
    return 0
