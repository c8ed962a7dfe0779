"""Faster R-CNN: detforge vs torchvision, same resnet18-FPN, same run.

- training step (forward + losses + backward + SGD step) and inference (forward + detections), medians after
  warm-up; both with frozen BatchNorm in the backbone (torchvision's ResNet-FPN default), torchvision's
  transform not resizing (min_size = max_size = image size);
- peak memory of the anchor assignment (anchors x ground truth IoU + matching) with ``--gt`` boxes per image:
  torchvision's ``Matcher(box_iou(...))`` per image vs detforge's batched, chunked ``match_boxes``, each in a
  fresh subprocess (peak RSS growth, glibc's mmap threshold fixed at 64 KiB so freed buffers are returned).

Goals (issue 13): training step <= 0.9x torchvision's, inference <= 1.0x, assignment memory <= 1/4.

    uv run python benchmarks/faster_rcnn.py [--size 320] [--batch 4] [--repeats 5] [--gt 2000] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

import torch

from timing import median_time  # benchmarks/timing.py, beside this script

CLASSES = 20


def make_batch(batch: int, size: int, boxes_per_image: int = 6, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, size, size, generator=gen)
    targets = []
    for _ in range(batch):
        xy = torch.rand(boxes_per_image, 2, generator=gen) * size * 0.7
        wh = 8 + torch.rand(boxes_per_image, 2, generator=gen) * size * 0.3
        boxes = torch.cat([xy, (xy + wh).clamp(max=size)], dim=1)
        targets.append(
            {"boxes": boxes, "labels": torch.randint(0, CLASSES, (boxes_per_image,), generator=gen)}
        )
    return images, targets


def build_torchvision(size: int):
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.models.detection.faster_rcnn import FasterRCNN

    torch.manual_seed(0)
    backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5)
    model = FasterRCNN(backbone, num_classes=CLASSES + 1, min_size=size, max_size=size)
    model.transform.resize = lambda image, target: (image, target)
    return model


def build_detforge(size: int):
    from timm.layers import freeze_batch_norm_2d

    from detforge.models.registry import create_model

    torch.manual_seed(0)
    model = create_model("faster_rcnn_resnet18", num_classes=CLASSES, input_size=(size, size))
    model.features.body = freeze_batch_norm_2d(model.features.body)  # frozen BatchNorm, as torchvision's
    return model


def time_models(args) -> dict[str, float]:
    images, targets = make_batch(args.batch, args.size)
    tv_targets = [{"boxes": t["boxes"], "labels": t["labels"] + 1} for t in targets]
    ours, theirs = build_detforge(args.size), build_torchvision(args.size)
    opt_ours = torch.optim.SGD(ours.parameters(), lr=1e-4)
    opt_theirs = torch.optim.SGD(theirs.parameters(), lr=1e-4)

    def train_ours():
        ours.train()
        _, losses = ours.forward_loss(images, targets, detections=False)  # as the training step
        opt_ours.zero_grad()
        losses["loss"].backward()
        opt_ours.step()

    def train_theirs():
        theirs.train()
        losses = theirs(list(images), tv_targets)
        opt_theirs.zero_grad()
        sum(losses.values()).backward()
        opt_theirs.step()

    @torch.no_grad()
    def infer_ours():
        ours.eval()
        ours.postprocess(ours(images), [(args.size, args.size)] * args.batch)

    @torch.no_grad()
    def infer_theirs():
        theirs.eval()
        theirs(list(images))

    return {
        "train_detforge": median_time(train_ours, args.repeats),
        "train_torchvision": median_time(train_theirs, args.repeats),
        "infer_detforge": median_time(infer_ours, args.repeats),
        "infer_torchvision": median_time(infer_theirs, args.repeats),
    }


def assignment_peak(which: str, size: int, batch: int, gt: int) -> float:
    """Peak RSS growth (MiB) of one batch's anchor matching, measured in this (fresh) process (Linux)."""
    from detforge.models.faster_rcnn.anchors import AnchorGenerator, default_anchor_sizes

    strides = (4, 8, 16, 32, 64)
    feat_sizes = [(-(-size // s), -(-size // s)) for s in strides]
    anchors, _ = AnchorGenerator(strides, default_anchor_sizes(strides))(feat_sizes)
    gen = torch.Generator().manual_seed(0)
    xy = torch.rand(batch, gt, 2, generator=gen) * size * 0.9
    boxes = torch.cat([xy, xy + 2 + torch.rand(batch, gt, 2, generator=gen) * 30], -1)
    mask = torch.ones(batch, gt, dtype=torch.bool)
    from torchvision.models.detection._utils import Matcher
    from torchvision.ops import box_iou

    from detforge.assigners.rcnn import match_boxes

    def run() -> None:
        if which == "torchvision":
            matcher = Matcher(0.7, 0.3, allow_low_quality_matches=True)
            for i in range(batch):
                matcher(box_iou(boxes[i], anchors))
        else:
            match_boxes(anchors[None], boxes, mask, 0.7, 0.3, allow_low_quality_matches=True)

    run()  # warm-up: lazy initialisation is not the matching's memory
    # The process's lifetime peak (ru_maxrss) may already exceed the matching's (imports, the warm-up), so the
    # current RSS is sampled while the matching runs and its peak taken above the RSS just before.
    page = os.sysconf("SC_PAGE_SIZE")

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * page

    before, peak, done = rss(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.0005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    run()
    done.set()
    sampler.join()
    return max(peak[0] - before, 0) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--gt", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--assignment-only", choices=["torchvision", "detforge"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.assignment_only:
        print(json.dumps(assignment_peak(args.assignment_only, args.size, args.batch, args.gt)))
        return
    print(f"cpu capability: {torch.backends.cpu.get_cpu_capability()}, threads {args.threads}")
    print(f"image {args.size} px, batch {args.batch}, {args.repeats} repeats (medians)")
    times = time_models(args)
    for key, value in times.items():
        print(f"{key:20s} {value * 1000:9.1f} ms")
    print(
        f"train step ratio detforge / torchvision: {times['train_detforge'] / times['train_torchvision']:.2f}x"
    )
    print(
        f"inference ratio detforge / torchvision:  {times['infer_detforge'] / times['infer_torchvision']:.2f}x"
    )
    peaks = {}
    for which in ("torchvision", "detforge"):
        cmd = [sys.executable, __file__, "--assignment-only", which, "--size", str(args.size)]
        cmd += ["--batch", str(args.batch), "--gt", str(args.gt), "--threads", str(args.threads)]
        # glibc's dynamic mmap threshold keeps freed chunk buffers in the heap and inflates the peak RSS of
        # any loop of large allocations; a fixed threshold makes the RSS peak follow the live memory
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
        done = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
        peaks[which] = float(done.stdout.split()[-1])
    print(
        f"assignment peak memory, {args.gt} boxes per image: torchvision {peaks['torchvision']:.1f} MiB, "
        f"detforge {peaks['detforge']:.1f} MiB ({peaks['detforge'] / max(peaks['torchvision'], 1e-9):.2f}x)"
    )


if __name__ == "__main__":
    main()
