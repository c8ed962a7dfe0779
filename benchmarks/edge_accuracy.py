"""COCO accuracy of trained edge detectors in PyTorch eager, onnxruntime float32 and onnxruntime INT8.

For each model: its ``detforge train`` checkpoint is exported to ONNX (``detforge.export.export_onnx``, the
one exporter ``detforge export`` uses), quantized to static INT8 (``detforge.export.quantize_int8``,
calibrated on ``--calib`` training images) and scored on the validation
split of its data. All three backends are decoded by the model's own ``postprocess`` and scored by the same
``DetectionMAP`` (COCO-exact), so the rows differ only in the network's numerics. The peer of each INT8 row
is the float32 ONNX row of the same model, measured in the same run: the drop is quoted in mAP points.

Run::

    uv run python benchmarks/edge_accuracy.py --models phantom nexus nightvision_edge \\
        --ckpt phantom=runs/train/phantom/best.ckpt --data phantom=widerface:/data/wider \\
        --ckpt nexus=... --data nexus=synthetic:1024 ...

A model without ``--ckpt`` or ``--data`` is reported as skipped. Always exits 0.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import traceback
from pathlib import Path

from detforge.models.edge.evaluate import BACKENDS, edge_accuracy


def _pairs(items: list[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        model, sep, value = item.partition("=")
        if not sep or not model or not value:
            raise SystemExit(f"edge_accuracy.py: {flag} takes MODEL=VALUE, got {item!r}")
        out[model] = value
    return out


def _size(n: int) -> str:
    return f"{n / 1024:.1f} KiB" if n < 1024 * 1024 else f"{n / 1024 / 1024:.2f} MiB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["phantom", "nexus", "nightvision_edge"])
    parser.add_argument(
        "--ckpt", nargs="+", action="extend", default=[], help="MODEL=PATH (best.ckpt of a run)"
    )
    parser.add_argument(
        "--data", nargs="+", action="extend", default=[], help="MODEL=SPEC (val split is scored)"
    )
    parser.add_argument("--imgsz", type=int, default=None, help="input side (default: the run's imgsz)")
    parser.add_argument("--calib", type=int, default=32, help="INT8 calibration images (default 32)")
    parser.add_argument("--batch", type=int, default=8, help="validation batch size")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    parser.add_argument(
        "--dataset-kwargs",
        nargs="+",
        action="extend",
        default=[],
        help="MODEL=JSON, e.g. phantom='{\"num_classes\": 1}'",
    )
    parser.add_argument("--out", default=None, help="folder for the ONNX files (default: a temporary one)")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    ckpts, specs = _pairs(args.ckpt, "--ckpt"), _pairs(args.data, "--data")
    kwargs = {m: json.loads(v) for m, v in _pairs(args.dataset_kwargs, "--dataset-kwargs").items()}

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        for model in args.models:
            if model not in ckpts or model not in specs:
                print(f"{model}: skipped (needs --ckpt {model}=PATH and --data {model}=SPEC)")
                continue
            start = time.perf_counter()
            try:
                got = edge_accuracy(
                    ckpts[model],
                    specs[model],
                    out / model,
                    imgsz=args.imgsz,
                    calibration_images=args.calib,
                    batch=args.batch,
                    threads=args.threads,
                    name=model,
                    dataset_kwargs=kwargs.get(model),
                )
            except Exception as err:  # one broken model must not hide the others' numbers
                traceback.print_exc()
                print(f"{model}: failed ({type(err).__name__}: {err})")
                continue
            print(
                f"{model}: {ckpts[model]} on {specs[model]} (val split), {time.perf_counter() - start:.0f} s"
            )
            rows += got

    print()
    print(f"{'model':<18}{'backend':<11}{'mAP':>8}{'mAP50':>8}{'size':>12}")
    by_model: dict[str, dict[str, object]] = {}
    for row in rows:
        by_model.setdefault(row.model, {})[row.backend] = row
        line = f"{row.model:<18}{row.backend:<11}{100 * row.map:>8.2f}{100 * row.map_50:>8.2f}"
        print(f"{line}{_size(row.size_bytes):>12}")
    print()
    for model, got in by_model.items():
        fp32, int8 = got[BACKENDS[1]], got[BACKENDS[2]]
        drop, drop50 = 100 * (fp32.map - int8.map), 100 * (fp32.map_50 - int8.map_50)
        eager_gap = 100 * (got[BACKENDS[0]].map - fp32.map)
        ratio = int8.size_bytes / fp32.size_bytes
        print(
            f"{model}: INT8 drop (fp32 - int8) {drop:+.2f} mAP points, {drop50:+.2f} mAP50 points; "
            f"eager - fp32 {eager_gap:+.2f} points; INT8 file {ratio:.2f}x the fp32 file"
        )
    if args.json:
        Path(args.json).write_text(json.dumps([r.__dict__ for r in rows], indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
