"""Data pipeline throughput: decode + train transforms + collate, ours against torchvision's COCO reader.

Writes a small COCO data set of JPEGs (synthetic shapes, 480x640) with ``write_coco`` into a temp folder, then
for each input size and worker count times one pass of a DataLoader (batch 16) over

- ours: ``CocoDataset`` (native JPEG decode to uint8) + ``build_train_transforms`` + ``detection_collate``;
- ref:  ``torchvision.datasets.CocoDetection`` + ``wrap_dataset_for_transforms_v2`` + ``ToImage`` and the
  very same v2 train pipeline + a stacking collate,

on the same files in the same run. Workers are persistent and warmed up; passes alternate between ours and
ref so that a busy machine slows both alike, with the same seed so both draw the same augmentations; each
cell is the median over the repeats.
Prints images/s and the ratio ours / ref (> 1 means we are faster). Always exits 0.

    uv run python benchmarks/data_pipeline.py [--num-images 200] [--repeats 3] [--sizes 320 640] [--workers 0 2]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision.transforms import v2

from detforge.data.coco import CocoDataset
from detforge.data.datamodule import detection_collate
from detforge.data.synthetic import SyntheticShapes
from detforge.data.transforms import build_train_transforms
from detforge.data.writers import write_coco


def _stack_collate(batch):
    return torch.stack([image for image, _ in batch]), [target for _, target in batch]


def _reference(image_dir: Path, ann_file: Path, imgsz: int):
    ours = build_train_transforms(imgsz)
    pipeline = v2.Compose([v2.ToImage(), *ours.pipeline.transforms])
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints while indexing
        dataset = datasets.CocoDetection(str(image_dir), str(ann_file), transforms=pipeline)
    return datasets.wrap_dataset_for_transforms_v2(dataset, target_keys=("boxes", "labels", "image_id"))


def _one_pass(loader: DataLoader) -> float:
    count, start = 0, time.perf_counter()
    for images, _ in loader:
        count += images.shape[0]
    return count / (time.perf_counter() - start)


def _compare(loaders: dict[str, DataLoader], repeats: int) -> dict[str, float]:
    """Median images/s of each loader; passes alternate between the loaders so load changes hit both alike."""
    for loader in loaders.values():  # warm-up: start the workers (seeded alike), fill the page cache
        torch.manual_seed(0)
        _one_pass(loader)
    rates: dict[str, list[float]] = {name: [] for name in loaders}
    for repeat in range(repeats):
        for name, loader in loaders.items():
            torch.manual_seed(1 + repeat)  # the same random augmentations for both in each pass
            rates[name].append(_one_pass(loader))
    return {name: statistics.median(values) for name, values in rates.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sizes", type=int, nargs="+", default=[320, 640])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(1)  # the same single thread per process a DataLoader worker gets
    with tempfile.TemporaryDirectory() as tmp:
        source = SyntheticShapes(args.num_images, image_size=(480, 640), empty_fraction=0.0, seed=0)
        ann_file = write_coco(source, tmp, split="train", image_format="jpg")
        image_dir = Path(tmp) / "train"
        print(f"{args.num_images} JPEGs 480x640, batch {args.batch_size}, median of {args.repeats} passes")
        print(f"{'imgsz':>5} {'workers':>7} {'ours img/s':>11} {'ref img/s':>10} {'ours/ref':>9}")
        for imgsz in args.sizes:
            for workers in args.workers:
                ours = CocoDataset(image_dir, ann_file, transforms=build_train_transforms(imgsz))
                ref = _reference(image_dir, ann_file, imgsz)
                loaders = {
                    name: DataLoader(
                        dataset,
                        batch_size=args.batch_size,
                        shuffle=False,
                        num_workers=workers,
                        collate_fn=collate,
                        persistent_workers=workers > 0,
                    )
                    for name, dataset, collate in (
                        ("ours", ours, detection_collate),
                        ("ref", ref, _stack_collate),
                    )
                }
                rates = _compare(loaders, args.repeats)
                del loaders
                ratio = rates["ours"] / rates["ref"]
                print(
                    f"{imgsz:>5} {workers:>7} {rates['ours']:>11.1f} {rates['ref']:>10.1f} {ratio:>9.2f}",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
