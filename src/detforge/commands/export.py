"""``detforge export --ckpt C --format onnx [--nms] [--dynamic]``: write a checkpoint's detector as ONNX.

Without ``--nms`` the graph returns the raw head tensors; with it, final ``boxes`` / ``scores`` / ``labels``
(decoding and NMS inside the graph). ``--dynamic`` makes the batch, height and width dynamic.
``--format int8`` writes the ONNX model and an INT8-quantised copy next to it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "export a checkpoint to ONNX (optionally with NMS in the graph) or INT8"

FORMATS = ("onnx", "int8")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="detforge export", description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", required=True, help="ObjectDetector checkpoint")
    parser.add_argument("--format", default="onnx", choices=FORMATS, help="onnx (default) or int8")
    parser.add_argument("--out", default=None, help="output .onnx path (default: next to the checkpoint)")
    parser.add_argument("--nms", action="store_true", help="decode and run NMS inside the graph")
    parser.add_argument("--dynamic", action="store_true", help="dynamic batch, height and width")
    parser.add_argument(
        "--imgsz", type=int, default=None, help="example input size (default: the training size)"
    )
    parser.add_argument("--batch", type=int, default=1, help="example input batch size")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset version (default 17)")
    return parser


def dynamic_axes_for(spatial: bool, input_name: str = "images") -> dict[str, dict[int, str]]:
    """Dynamic batch on the input, plus height / width when ``spatial`` (raw FCOS heads only: graphs that
    decode boxes bake the example's location grid in). The exporter names the outputs' dynamic axes."""
    return {input_name: {0: "batch", 2: "height", 3: "width"} if spatial else {0: "batch"}}


def _decodes_boxes(model) -> bool:
    """True when the bare model's raw outputs already hold decoded boxes (YOLOX, the edge models)."""
    from detforge.models.fcos import FCOS

    return not isinstance(model, FCOS)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    import torch

    from detforge.engine.validate import load_detector

    model = load_detector(args.ckpt, "cpu")
    imgsz = (
        args.imgsz or model.hparams.get("imgsz") or max(getattr(model.model, "default_input_size", (640,)))
    )
    out = Path(args.out) if args.out else Path(args.ckpt).with_suffix(".nms.onnx" if args.nms else ".onnx")
    example = torch.rand(args.batch, model.hparams.in_chans, int(imgsz), int(imgsz))
    path = model.to_onnx(
        str(out),
        example_input=example,
        opset_version=args.opset,
        dynamic_axes=dynamic_axes_for(spatial=not args.nms and not _decodes_boxes(model.model))
        if args.dynamic
        else None,
        with_nms=args.nms,
    )
    print(f"ONNX: {path}")
    if args.format == "int8":
        from detforge.export import quantize_int8

        q_path = quantize_int8(str(path), str(Path(path).with_suffix(".int8.onnx")))
        print(f"INT8: {q_path}")
    return 0
