"""Training-step time and inference latency of registered models against FCOS on the same backbone.

For each model name (any registered name or prefix form, e.g. ``yolov3_resnet18``, ``yolov1_resnet18``,
``centernet_resnet18``) the same-backbone FCOS (``fcos_<timm name>``, the timm name read from the built
model's backbone) is built too; both train on the same batch (AdamW step: forward, loss, backward) and run
inference (forward + post-processing, eval mode, no grad). Prints the median over repeats after warm-up of
each and the ratios model / FCOS. Names that are not registered are skipped with a note.

    uv run python benchmarks/family_speed.py --models yolov3_resnet18 centernet_resnet18 yolov1_resnet18 \\
        --batch 8 --size 320 --repeats 5 --threads 2
"""

from __future__ import annotations

import argparse

import torch

from detforge.models.registry import create_model, is_model
from timing import make_batch, median_time  # benchmarks/timing.py, beside this script


def backbone_name(model: torch.nn.Module, name: str) -> str:
    """The timm name of a built model's backbone (its ``pretrained_cfg``), else the name's suffix."""
    body = getattr(model, "backbone", None)
    cfg = getattr(body, "pretrained_cfg", None) or {}
    return str(cfg.get("architecture") or name.split("_", 1)[1])


def measure(model: torch.nn.Module, images, targets, repeats: int, warmup: int) -> tuple[float, float]:
    """(median training-step seconds, median inference seconds)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    sizes = [tuple(images.shape[-2:])] * images.shape[0]

    def train_step():
        model.train()
        _, losses = model.forward_loss(images, targets, detections=False)  # as the training step
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        optimizer.step()

    @torch.no_grad()
    def infer():
        model.eval()
        model.postprocess(model(images), sizes)

    return median_time(train_step, repeats, warmup), median_time(infer, repeats, warmup)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", nargs="+", default=["yolov3_resnet18", "centernet_resnet18", "yolov1_resnet18"]
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
        f"{args.threads} threads, batch {args.batch}, {args.size} px, median of {args.repeats}"
    )
    images, targets = make_batch(args.batch, args.size, args.classes)
    rows, fcos_times = [], {}
    for name in args.models:
        if not is_model(name):
            print(f"skip {name}: not registered in this build")
            continue
        torch.manual_seed(0)
        model = create_model(name, num_classes=args.classes, input_size=(args.size, args.size))
        fcos = f"fcos_{backbone_name(model, name)}"
        train, infer = measure(model, images, targets, args.repeats, args.warmup)
        if fcos not in fcos_times:
            torch.manual_seed(0)
            reference = create_model(fcos, num_classes=args.classes, input_size=(args.size, args.size))
            fcos_times[fcos] = measure(reference, images, targets, args.repeats, args.warmup)
        rows.append((name, fcos, train, infer, *fcos_times[fcos]))
    if not rows:
        return 0
    print(
        f"{'model':<22} {'vs':<20} {'train ms':>9} {'fcos ms':>8} {'ratio':>6} {'infer ms':>9} {'fcos ms':>8} "
        f"{'ratio':>6}"
    )
    for name, fcos, train, infer, fcos_train, fcos_infer in rows:
        print(
            f"{name:<22} {fcos:<20} {train * 1e3:>9.1f} {fcos_train * 1e3:>8.1f} {train / fcos_train:>6.2f} "
            f"{infer * 1e3:>9.1f} {fcos_infer * 1e3:>8.1f} {infer / fcos_infer:>6.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
