"""``detforge bench``: time a model's forward and postprocess on this machine (median over repeats).

``--engine torch,onnxruntime`` times each engine (:mod:`detforge.engines`) on the same model and input, one
row each: the eager model, and its ONNX graph in onnxruntime (``--ckpt``: the cached export beside the
checkpoint; ``--model``: a temporary export; ``--weights FILE.onnx``: that file, onnxruntime only).
"""

from __future__ import annotations

import argparse
import statistics
import time

HELP = "time a model's forward and postprocess on this machine"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="detforge bench", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", default="detforge_n", help="registered model name (default detforge_n)")
    source.add_argument("--ckpt", default=None, help="an ObjectDetector checkpoint instead of a model name")
    parser.add_argument(
        "--weights",
        default=None,
        help="with --model: its named weights (coco) or a file in their layout; a path ending in .onnx: an "
        "exported file (--engine onnxruntime)",
    )
    parser.add_argument(
        "--engine",
        default="torch",
        help="torch (default), onnxruntime, or both to compare: torch,onnxruntime (one row each)",
    )
    parser.add_argument("--imgsz", type=int, default=None, help="square input size (default: the model's)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--num-classes", type=int, default=80)
    parser.add_argument("--iters", type=int, default=20, help="timed repeats")
    parser.add_argument("--warmup", type=int, default=3, help="untimed repeats first")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: $DETFORGE_NUM_THREADS, else the available CPUs)",
    )
    parser.add_argument(
        "--no-fold-batchnorm",
        action="store_true",
        help="keep BatchNorm layers (default: folded into their convolutions, as predict runs)",
    )
    return parser


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(model, images, iters: int = 20, warmup: int = 3, engine=None) -> dict[str, float]:
    """Median milliseconds of ``model.forward`` (or ``engine``'s call, :mod:`detforge.engines`) and
    ``model.postprocess`` on ``images`` (Tensor[B, C, H, W]); postprocess is 0 for an engine that returns
    detections (NMS in its graph)."""
    import torch

    sizes = [tuple(images.shape[-2:])] * images.shape[0]
    network = model if engine is None else (lambda x: engine(x, sizes))
    in_graph = engine is not None and engine.returns_detections
    forward_ms, post_ms = [], []
    with torch.inference_mode():
        for i in range(warmup + iters):
            _sync(images.device)
            t0 = time.perf_counter()
            outputs = network(images)
            _sync(images.device)
            t1 = time.perf_counter()
            if not in_graph:
                model.postprocess(outputs, sizes)
            _sync(images.device)
            t2 = time.perf_counter()
            if i >= warmup:
                forward_ms.append((t1 - t0) * 1e3)
                post_ms.append((t2 - t1) * 1e3)
    return {"forward_ms": statistics.median(forward_ms), "postprocess_ms": statistics.median(post_ms)}


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    import torch

    from detforge.engine.memory_format import choose_memory_formats
    from detforge.engine.threads import chosen_threads, configure_threads
    from detforge.engine.validate import resolve_device
    from detforge.engines import is_onnx_file, load_command_detector, open_engine, parse_engine_names
    from detforge.models.fold_batchnorm import fold_batchnorm

    engines = parse_engine_names(args.engine, allow_several=True)  # an unknown engine: one line, exit 2
    configure_threads(args.threads or "auto")
    device = resolve_device(args.device)
    onnx_file = args.weights if is_onnx_file(args.weights) else None
    if args.ckpt or onnx_file:
        detector = load_command_detector(args.ckpt, None, onnx_file, device)
        name = args.ckpt or onnx_file
    else:
        from detforge.models.detector import ObjectDetector

        kwargs = {"weights": args.weights} if args.weights else {"num_classes": args.num_classes}
        detector = ObjectDetector(model=args.model, compile_model=False, deterministic=False, **kwargs)
        detector, name = detector.to(device).eval(), args.model
    model = detector.model
    size = args.imgsz or max(getattr(model, "default_input_size", (640,)))
    images = torch.rand(args.batch, getattr(model, "in_chans", 3), size, size, device=device)
    threads = chosen_threads(args.threads or "auto")  # onnxruntime's intra-op threads, as torch's
    runners = {
        e: open_engine(e, detector, size, ckpt=args.ckpt, onnx=onnx_file, threads=threads) for e in engines
    }
    if "torch" in engines and not args.no_fold_batchnorm:  # as predict runs it
        print(f"detforge: {fold_batchnorm(model)} BatchNorm layers folded into their convolutions")
    if "torch" in engines:
        for line in choose_memory_formats(model, tuple(images.shape), train=False):  # as predict runs it
            print(f"detforge: {line}")
    for engine, runner in runners.items():
        result = bench(model, images, args.iters, args.warmup, engine=None if engine == "torch" else runner)
        per_image = (result["forward_ms"] + result["postprocess_ms"]) / args.batch
        where = (
            f"{device} ({torch.get_num_threads()} threads)"
            if engine == "torch"
            else f"cpu ({threads} threads)"
        )
        print(
            f"{engine}: {name}: batch {args.batch} x {size}x{size} on {where}: "
            f"forward {result['forward_ms']:.1f} ms, postprocess {result['postprocess_ms']:.1f} ms, "
            f"{per_image:.1f} ms/image, {1000 / per_image:.1f} images/s"
        )
    return 0
