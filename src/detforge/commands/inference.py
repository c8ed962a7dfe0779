"""What ``detforge predict`` and ``detforge track`` share: the model options and one start-up sequence (load the
detector, choose the score threshold, fold BatchNorm, open the engine, choose the memory format), ending in a
:class:`~detforge.engines.pipeline.DetectionPipeline`."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any

__all__ = ["Inference", "add_model_arguments", "choose_conf", "prepare_inference"]


def log(line: str) -> None:
    print(f"detforge: {line}", file=sys.stderr)


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


def add_model_arguments(parser: argparse.ArgumentParser, *, batch: int = 8) -> None:
    """``--ckpt | --model --weights | --weights FILE.onnx``, ``--engine``, ``--imgsz``, ``--conf``, ``--batch``,
    ``--device``, ``--no-fold-batchnorm``."""
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
    parser.add_argument("--batch", type=int, default=batch, help=f"images per forward pass (default {batch})")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--no-fold-batchnorm",
        action="store_true",
        help="keep BatchNorm layers as trained (default: folded into their convolutions, a few %% faster)",
    )


@dataclass
class Inference:
    """The started model: ``detector`` (eval mode), ``engine_name``, ``pipeline`` (decoded images ->
    detections in their pixels), ``conf`` (the score threshold), ``imgsz``, ``own_preprocess``."""

    detector: Any
    engine_name: str
    pipeline: Any
    conf: float
    imgsz: int
    own_preprocess: bool

    @property
    def class_names(self) -> list[str] | None:
        return self.detector.class_names


def prepare_inference(
    args: argparse.Namespace,
    parser: argparse.ArgumentParser,
    *,
    batch: int,
    torch_only: str | None = None,
    memory_format: bool = True,
) -> Inference:
    """Start the model the options of :func:`add_model_arguments` name, logging each choice on stderr.

    Args:
        batch: images per forward pass in this run (the memory format is measured at this batch).
        torch_only: a reason the run needs the eager model (``--slice``), refused with another engine.
        memory_format: measure channels-last against NCHW (off for sliced inference, whose tile batches vary).
    """
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
    from detforge.engine.memory_format import choose_memory_formats
    from detforge.engine.validate import uses_own_preprocess
    from detforge.engines import load_command_detector, open_engine
    from detforge.engines.pipeline import DetectionPipeline
    from detforge.errors import InvalidValueError
    from detforge.models.fold_batchnorm import fold_batchnorm

    # a missing or corrupt checkpoint, a bad --device: one line and exit 2 (detforge.cli)
    detector = load_command_detector(args.ckpt, args.model, args.weights, args.device)
    conf, conf_source = choose_conf(args.conf, getattr(detector, "best_conf", None))
    log(conf_source)
    own_preprocess = uses_own_preprocess(detector)  # named weights: their resize, on the images as they are
    onnx_file = args.weights if is_onnx_file(args.weights) else None
    if engine_name == "onnxruntime" and (own_preprocess or torch_only):
        why = torch_only or "named weights with their own pre-processing"
        raise InvalidValueError(f"--engine onnxruntime: {why} runs with --engine torch only")
    if engine_name == "torch" and not args.no_fold_batchnorm and onnx_file is None:
        log(f"{fold_batchnorm(detector.model)} BatchNorm layers folded into their convolutions")
    imgsz = int(
        args.imgsz
        or detector.hparams.get("imgsz")
        or max(getattr(detector.model, "default_input_size", (640,)))
    )
    engine = open_engine(engine_name, detector, imgsz, ckpt=args.ckpt, onnx=onnx_file, log=log)
    # channels-last or NCHW, whichever predicts faster here (measured once, cached)
    if memory_format and not own_preprocess and engine_name == "torch":
        for line in choose_memory_formats(
            detector.model, (batch, detector.hparams.in_chans, imgsz, imgsz), train=False
        ):
            log(line)
    pipeline = DetectionPipeline(detector, engine, imgsz, own_preprocess=own_preprocess)
    return Inference(detector, engine_name, pipeline, conf, imgsz, own_preprocess)
