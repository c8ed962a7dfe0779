"""``detforge export --ckpt C --format onnx|int8 [--nms] [--dynamic] [--data SPEC]``: write a checkpoint's
detector as ONNX, the one exporter for every model (``detforge.export``; edge detectors included).

Without ``--nms`` the graph returns the raw head tensors (``model.export_raw``, plus a video model's state
outputs); with it, final ``boxes`` / ``scores`` / ``labels`` / ``num_detections`` (decoding and NMS inside the
graph). ``--dynamic`` makes the batch dynamic, and the height and width too where the raw graph allows it.
``--format int8`` also writes a static INT8 copy (QDQ, per-channel weights) calibrated on ``--calib`` training
images of ``--data`` (default: the run's data, from the config.yaml beside the checkpoint); without any data
it falls back to dynamic quantization and says so. The formats are looked up by name in
:mod:`detforge.export.registry` (``register_exporter``). Every file carries what ``--engine onnxruntime``
needs to rebuild detforge's pre- and post-processing around it (:mod:`detforge.export.metadata`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "export a checkpoint to ONNX (optionally with NMS in the graph) or INT8"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="detforge export", description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", default=None, help="ObjectDetector checkpoint")
    parser.add_argument("--model", default=None, help="a registered model, with --weights instead of --ckpt")
    parser.add_argument(
        "--weights", default=None, help="the model's named weights (coco) or a file in their layout"
    )
    parser.add_argument(
        "--format",
        default="onnx",
        help="a registered export format: onnx (default) or int8 (detforge.export)",
    )
    parser.add_argument("--out", default=None, help="output .onnx path (default: next to the checkpoint)")
    parser.add_argument("--nms", action="store_true", help="decode and run NMS inside the graph")
    parser.add_argument(
        "--dynamic", action="store_true", help="dynamic batch (and height / width if possible)"
    )
    parser.add_argument(
        "--imgsz", type=int, default=None, help="example input size (default: the training size)"
    )
    parser.add_argument("--batch", type=int, default=1, help="example input batch size")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset version (default 17)")
    parser.add_argument(
        "--data", default=None, help="INT8 calibration data spec (default: the run's, from its config.yaml)"
    )
    parser.add_argument("--calib", type=int, default=32, help="INT8 calibration images (default 32)")
    return parser


def calibration_batches(args: argparse.Namespace, imgsz: int, batch: int) -> list:
    """Calibration images for ``--format int8``: ``--calib`` training images of ``--data`` or the run's data
    spec, letterboxed to ``imgsz`` and stacked into batches of ``batch`` (arrays [batch, C, imgsz, imgsz]);
    [] when no data spec is known."""
    import numpy as np

    from detforge.engine.validate import run_data_config
    from detforge.models.edge.evaluate import calibration_frames

    run = run_data_config(args.ckpt) if args.ckpt else {}
    data = args.data or run.get("data")
    if not isinstance(data, str):
        return []
    kwargs = (run.get("dataset_kwargs") or {}) if data == run.get("data") else {}
    frames = calibration_frames(data, imgsz, count=max(args.calib, batch), **kwargs)  # [1, C, S, S] each
    return [np.concatenate(frames[i : i + batch]) for i in range(0, len(frames) - batch + 1, batch)]


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.ckpt is None) == (args.weights is None) or (args.model is None) != (args.weights is None):
        parser.error(
            "give --ckpt CKPT, or --model NAME --weights W (e.g. --model fcos_resnet50_fpn --weights coco)"
        )
    import torch

    from detforge.engine.validate import load_detector, load_pretrained_detector
    from detforge.export import detector_metadata, get_exporter

    exporter = get_exporter(args.format)  # an unknown format: one line naming the known ones, exit 2
    if args.ckpt is not None:  # a missing or corrupt checkpoint: one line and exit 2 (detforge.cli)
        detector = load_detector(args.ckpt, "cpu")
    else:
        detector = load_pretrained_detector(args.model, args.weights, "cpu")
    model = detector.model
    imgsz = int(
        args.imgsz or detector.hparams.get("imgsz") or max(getattr(model, "default_input_size", (640,)))
    )
    source = Path(args.ckpt) if args.ckpt else Path(f"{args.model}_{Path(str(args.weights)).stem}")
    out = Path(args.out) if args.out else source.with_suffix(".nms.onnx" if args.nms else ".onnx")
    example = torch.rand(args.batch, detector.hparams.in_chans, imgsz, imgsz)
    calibration = None
    if args.format == "int8":
        batches = calibration_batches(args, imgsz, 1 if args.dynamic else args.batch)
        if not batches:
            print(
                "INT8: no calibration data (no --data and no config.yaml beside the checkpoint): dynamic quantization"
            )
        calibration = [model.export_inputs(torch.from_numpy(b)) for b in batches]
    what = str(args.ckpt) if args.ckpt else f"--model {args.model} --weights {args.weights}"
    path = exporter(
        model,
        out,
        example=example,
        nms=args.nms,
        dynamic=args.dynamic,
        opset=args.opset,
        calib_data=calibration,
        metadata=detector_metadata(detector, (imgsz, imgsz), args.nms, source=what),
    )
    if Path(path) != out and out.is_file():  # a format that also wrote the float graph (int8)
        print(f"ONNX: {out} ({out.stat().st_size} bytes)")
    calibrated = "" if calibration is None else f", calibrated on {len(calibration)} batches"
    print(f"{args.format.upper()}: {path} ({Path(path).stat().st_size} bytes{calibrated})")
    return 0
