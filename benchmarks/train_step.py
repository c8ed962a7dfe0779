"""Training-step time and inference latency: detforge FCOS vs torchvision FCOS, same setup, one run.

Both use a resnet18 backbone (random init, trainable BatchNorm), a 256-channel FPN with P6/P7, a 4-conv GroupNorm
head, the same batch of images and targets. torchvision's transform runs at min_size = max_size = image size
so it does not resize. Prints median times over repeats after warm-up (one step of each in turn, ABBA), the
ratios detforge / torchvision of the medians and the middle half of the per-round ratios (goal on a CPU:
training step <= 1.0, inference <= 0.9, on AVX2 and AVX-512 machines alike). detforge's memory format is
chosen as training and predict choose it (``--memory-format auto``: both timed on this machine, cached; then
the head's own, the rest staying in the chosen one) and printed with the CPU and its capability; its
inference runs as ``detforge predict`` does, with BatchNorm folded into the convolutions.

    uv run python benchmarks/train_step.py [--batch 8] [--size 320] [--classes 20] [--repeats 7] [--threads 2]
        [--memory-format auto|channels_last|nchw]
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch
from torchvision.models import resnet18
from torchvision.models.detection import FCOS as TorchvisionFCOS
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from detforge.engine.memory_format import choose_memory_formats, machine_key
from detforge.models.fcos import FCOS
from detforge.models.fold_batchnorm import fold_batchnorm
from timing import interleaved_times, make_batch  # benchmarks/timing.py, beside this script


def build_torchvision(num_classes: int, size: int) -> torch.nn.Module:
    backbone = _resnet_fpn_extractor(
        resnet18(), trainable_layers=5, returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256)
    )
    return TorchvisionFCOS(
        backbone,
        num_classes,
        min_size=size,
        max_size=size,
        score_thresh=0.05,
        nms_thresh=0.6,
        detections_per_img=100,
        topk_candidates=1000,
    )


def build_detforge(num_classes: int, size: int) -> torch.nn.Module:
    return FCOS("resnet18", num_classes, fpn_channels=256, head_num_convs=4, input_size=(size, size))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--memory-format",
        default="auto",
        choices=("auto", "channels_last", "nchw"),
        help="detforge's memory format: auto measures both on this machine (cached), as training does",
    )
    parser.add_argument(
        "--no-fold-batchnorm",
        action="store_true",
        help="detforge's inference with its BatchNorm layers (default: folded, as detforge predict runs)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    images, targets = make_batch(args.batch, args.size, args.classes)
    sizes = [(args.size, args.size)] * args.batch

    ours = build_detforge(args.classes, args.size)
    theirs = build_torchvision(args.classes, args.size)
    opt_ours = torch.optim.SGD(ours.parameters(), lr=1e-4, momentum=0.9)
    opt_theirs = torch.optim.SGD(theirs.parameters(), lr=1e-4, momentum=0.9)

    def train_ours():
        ours.train()
        loss = ours.loss(ours(images), targets)["loss"]
        opt_ours.zero_grad(set_to_none=True)
        loss.backward()
        opt_ours.step()

    def train_theirs():
        theirs.train()
        losses = theirs(list(images), targets)
        loss = sum(losses.values())
        opt_theirs.zero_grad(set_to_none=True)
        loss.backward()
        opt_theirs.step()

    # Inference runs what `detforge predict` runs: a copy in eval mode with BatchNorm folded into the convs.
    predictor = copy.deepcopy(ours).eval()
    if not args.no_fold_batchnorm:
        print(f"inference: {fold_batchnorm(predictor)} BatchNorm layers folded into their convolutions")

    @torch.inference_mode()
    def infer_ours():
        predictor.postprocess(predictor(images), sizes)

    @torch.inference_mode()
    def infer_theirs():
        theirs.eval()
        theirs(list(images))

    shape = tuple(images.shape)
    for model, train in ((ours, True), (predictor, False)):
        for line in choose_memory_formats(model, shape, train=train, mode=args.memory_format):
            print(f"{'train' if train else 'inference'}: {line}")
    rows = []
    for name, fn_ours, fn_theirs in (
        ("train step", train_ours, train_theirs),
        ("inference", infer_ours, infer_theirs),
    ):
        # One call of each per round, in turn (ABBA): slow drift on a shared machine hits both alike, and the
        # ratio of each round compares two steps taken seconds apart.
        times = interleaved_times({"ours": fn_ours, "theirs": fn_theirs}, args.repeats, args.warmup)
        ratios = sorted(a / b for a, b in zip(times["ours"], times["theirs"]))
        quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
        rows.append(
            (
                name,
                statistics.median(times["ours"]),
                statistics.median(times["theirs"]),
                quartiles[0],
                quartiles[2],
            )
        )

    print(
        f"batch {args.batch}, {args.size}x{args.size}, {args.classes} classes, resnet18 + FPN(256) + P6/P7, "
        f"torch threads {args.threads}, median over repeats"
    )
    print(
        f"CPU: {machine_key()} (torch.backends.cpu.get_cpu_capability() = {torch.backends.cpu.get_cpu_capability()})"
    )
    print(f"{'':12s} {'detforge':>12s} {'torchvision':>12s} {'ratio':>8s} {'rounds 25-75%':>16s}")
    for name, a, b, low, high in rows:
        print(f"{name:12s} {a * 1000:10.1f}ms {b * 1000:10.1f}ms {a / b:8.3f} {low:7.3f} - {high:5.3f}")
    print(f"train step ratio (detforge / torchvision): {rows[0][1] / rows[0][2]:.3f} (goal <= 1.0 on CPU)")
    print(f"inference ratio  (detforge / torchvision): {rows[1][1] / rows[1][2]:.3f} (goal <= 0.9 on CPU)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
