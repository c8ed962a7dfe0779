"""``detforge val``: COCO evaluation of a results JSON against its ground truth, or of a checkpoint on a data set.

detforge val --gt instances_val.json --pred results.json [--plots DIR] [--save-json metrics.json]
detforge val --ckpt run/last.ckpt --data coco:ANN.json:IMAGES [--imgsz 640 --batch 8 --device cpu --out DIR]
detforge val --ckpt runs/train/exp/best.ckpt     # the run's own validation split and data settings
detforge val --ckpt runs/train/exp/best.ckpt --split test   # the run's --data.test_data
detforge val --ckpt C --data synthetic-dense:50 --slice 512 --overlap 0.2   # sliced inference, full images
detforge val --model fasterrcnn_resnet50_fpn --weights coco --data coco:ANN.json:IMAGES   # a COCO-trained model
detforge val --ckpt runs/train/exp/best.ckpt --engine onnxruntime   # the network in onnxruntime (cached export)
detforge val --weights best.onnx --engine onnxruntime --data synthetic:50   # an exported file (detforge export)
detforge val --ckpt C --data synthetic-video --track   # track the sequences, print HOTA / MOTA / IDF1
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HELP = "evaluate a checkpoint on a data set, or a COCO results JSON against its ground truth"
_EXAMPLES = """examples:
  detforge val --gt instances_val.json --pred results.json --plots out/ --save-json out/metrics.json
  detforge val --ckpt run/last.ckpt --data coco:ANN.json:IMAGES --imgsz 640 --batch 8 --out out/
  detforge val --ckpt runs/train/exp/best.ckpt     # the run's data, as in its config.yaml
  detforge val --ckpt runs/train/exp/best.ckpt --split test   # the run's test_data
  detforge val --ckpt runs/train/exp/best.ckpt --engine onnxruntime   # onnxruntime, same pre/post-processing
  detforge val --ckpt C --data mot:MOT17:train --track --tracker bytetrack   # HOTA, MOTA, IDF1 per sequence"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="detforge val",
        description=HELP[0].upper() + HELP[1:] + ".",
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    files = p.add_argument_group("evaluate a COCO results file")
    files.add_argument("--gt", type=Path, help="COCO instances JSON (images, annotations, categories)")
    files.add_argument("--pred", type=Path, help="COCO results JSON: [{image_id, category_id, bbox, score}]")
    files.add_argument("--plots", type=Path, help="write pr_curve.png and confusion_matrix.png here")
    files.add_argument("--save-json", type=Path, help="write the 12 stats and per-class AP here as JSON")
    model = p.add_argument_group("evaluate a checkpoint")
    model.add_argument("--ckpt", type=Path, help="checkpoint written by `detforge train`")
    model.add_argument("--model", default=None, help="a registered model, with --weights instead of --ckpt")
    model.add_argument(
        "--weights",
        default=None,
        help="the model's named weights (coco) or a file in their layout; a path ending in .onnx is an "
        "exported file (with --engine onnxruntime, no --model)",
    )
    model.add_argument(
        "--engine",
        default="torch",
        help="torch (default: eager PyTorch) or onnxruntime (--weights FILE.onnx, or --ckpt: a cached export)",
    )
    model.add_argument(
        "--data",
        help="data set spec, e.g. synthetic:200, coco:ANN.json:IMAGES, voc:DIR (default: the training run's, "
        "from the config.yaml beside the checkpoint)",
    )
    model.add_argument(
        "--dataset-kwargs",
        type=json.loads,
        default=None,
        help="data set options as JSON, e.g. '{\"min_size\": 16}' (default: the run's, for the run's data)",
    )
    model.add_argument(
        "--split",
        choices=("val", "test"),
        default="val",
        help="val: the run's validation data; test: the run's test data (--data.test_data of detforge train), "
        "or --data as the test set",
    )
    model.add_argument("--imgsz", type=int, default=None, help="input size (default: the model's)")
    model.add_argument("--batch", type=int, default=8)
    model.add_argument("--device", default="cpu")
    model.add_argument("--out", type=Path, default=None, help="folder for results JSON, metrics and plots")
    from detforge.slicing.predict import add_slicing_arguments

    add_slicing_arguments(p)
    track = p.add_argument_group("evaluate tracking (a video data set: synthetic-video, mot:ROOT)")
    track.add_argument(
        "--track", action="store_true", help="track each sequence and print HOTA, MOTA, IDF1 and their parts"
    )
    track.add_argument("--tracker", default="bytetrack", help="a registered tracker (default bytetrack)")
    track.add_argument(
        "--tracker-option",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a tracker option (repeatable)",
    )
    track.add_argument(
        "--conf",
        type=float,
        default=None,
        help="the tracker's score threshold (default: the checkpoint's F1-best validation confidence, else 0.25)",
    )
    return p


def _evaluate_tracking(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``--track``: every sequence of the data set tracked as ``detforge track`` does, scored against its
    ground truth; the table on stdout, ``tracking_metrics.json`` and the MOT results files in the output."""
    from detforge.commands.inference import prepare_inference
    from detforge.commands.track import parse_options
    from detforge.data.spec import build_dataset
    from detforge.engine.callbacks import atomic_write
    from detforge.engine.validate import check_checkpoint_file, run_data_config
    from detforge.errors import InvalidValueError
    from detforge.tracking import create_tracker, tracker_thresholds
    from detforge.tracking.evaluate import dataset_sequences, evaluate_tracking
    from detforge.tracking.registry import create_detector_tracker

    if args.slice is not None:
        raise InvalidValueError("--track runs on whole frames: leave out --slice")
    data, kwargs = args.data, args.dataset_kwargs
    if args.ckpt is not None:
        check_checkpoint_file(args.ckpt)
        run = run_data_config(args.ckpt)
        if data is None:
            data = run.get("data")
        if kwargs is None and data == run.get("data"):
            kwargs = run.get("dataset_kwargs") or {}
    if not isinstance(data, str):
        raise InvalidValueError(
            "--track: give the video data set (--data synthetic-video or --data mot:ROOT)"
        )
    sequences = dataset_sequences(build_dataset(data, "val", **(kwargs or {})))
    options = parse_options(args.tracker_option)
    create_tracker(args.tracker, **options)  # an unknown tracker or option: one line before the model loads
    started = prepare_inference(args, parser, batch=args.batch)
    tracker = create_detector_tracker(args.tracker, conf=started.conf, detector=started.detector, **options)
    options = {**tracker_thresholds(args.tracker, started.conf), **options}  # for the report
    out = args.out or (Path(args.ckpt).parent / "val_report" if args.ckpt is not None else Path("runs/val"))
    evaluation = evaluate_tracking(
        sequences,
        started.pipeline,
        tracker,
        conf=started.conf,
        batch=args.batch,
        channels=started.detector.hparams.in_chans,
        out=out / "tracks",
    )
    result = evaluation.result
    print(f"{data}: {len(sequences)} sequences, {evaluation.frames} frames, tracker {args.tracker}")
    print(result.table())
    payload = {"data": data, "tracker": args.tracker, "tracker_options": options, **result.as_dict()}
    text = json.dumps(payload, indent=2, default=float)
    written = atomic_write(out / "tracking_metrics.json", lambda tmp: Path(tmp).write_text(text))
    print(f"metrics written to {written}; MOT results in {out / 'tracks'}")
    return 0


def _write_plots(result, gt_path: Path, pred_path: Path, out: Path) -> list[Path]:
    import numpy as np
    import torch

    from detforge.metrics import CocoDetections, CocoGroundTruth, load_coco_json
    from detforge.metrics.plots import confusion_matrix, plot_confusion_matrix, plot_pr_curves

    written = [plot_pr_curves(result, out / "pr_curve.png")]
    gt = CocoGroundTruth.from_coco_dict(load_coco_json(gt_path), str(gt_path))
    dt = CocoDetections.from_coco_results(load_coco_json(pred_path), str(pred_path))
    cats = result.category_ids
    to_label = {int(c): i for i, c in enumerate(cats.tolist())}
    preds, targets = [], []
    for img in result.image_ids.tolist():
        g = (gt.image_ids == img) & np.isin(gt.category_ids, cats)
        d = (dt.image_ids == img) & np.isin(dt.category_ids, cats)
        g_xyxy = np.concatenate([gt.boxes[g, :2], gt.boxes[g, :2] + gt.boxes[g, 2:]], 1)
        d_xyxy = np.concatenate([dt.boxes[d, :2], dt.boxes[d, :2] + dt.boxes[d, 2:]], 1)
        targets.append(
            {
                "boxes": torch.as_tensor(g_xyxy),
                "labels": torch.as_tensor([to_label[int(c)] for c in gt.category_ids[g]], dtype=torch.long),
                "ignore": torch.as_tensor(gt.ignore[g]),
            }
        )
        preds.append(
            {
                "boxes": torch.as_tensor(d_xyxy),
                "scores": torch.as_tensor(dt.scores[d]),
                "labels": torch.as_tensor([to_label[int(c)] for c in dt.category_ids[d]], dtype=torch.long),
            }
        )
    matrix = confusion_matrix(preds, targets, num_classes=len(cats))
    names = [result.category_names.get(int(c), str(c)) for c in cats.tolist()]
    written.append(plot_confusion_matrix(matrix, out / "confusion_matrix.png", names))
    return written


def _evaluate_files(args: argparse.Namespace) -> int:
    from detforge.errors import InvalidValueError, UserError
    from detforge.metrics import evaluate_coco_files

    try:
        result = evaluate_coco_files(args.gt, args.pred)
    except ValueError as err:  # the checks of the user's --gt / --pred files, naming them
        if isinstance(err, UserError):
            raise
        raise InvalidValueError(str(err)) from err
    print(f"{len(result.image_ids)} images, {len(result.category_ids)} categories")
    print(result.table())
    if args.save_json:
        payload = {
            "stats": result.as_dict(),
            "per_class_ap": {str(k): v for k, v in result.per_class_ap.items()},
        }
        args.save_json.parent.mkdir(parents=True, exist_ok=True)
        args.save_json.write_text(json.dumps(payload, indent=2))
        print(f"metrics written to {args.save_json}")
    if args.plots:
        for path in _write_plots(result, args.gt, args.pred, args.plots):
            print(f"plot written to {path}")
    return 0


def _evaluate_checkpoint(args: argparse.Namespace) -> int:
    from detforge.slicing.predict import slicing_options

    try:
        from detforge.engine.validate import validate_checkpoint
    except ImportError as err:
        print(
            f"detforge val: checkpoint evaluation is not available in this build ({err}); "
            "evaluate a results file with --gt GT.json --pred RESULTS.json",
            file=sys.stderr,
        )
        return 2
    out = validate_checkpoint(
        ckpt=args.ckpt,
        data=args.data,
        imgsz=args.imgsz,
        batch=args.batch,
        device=args.device,
        out_dir=args.out,
        dataset_kwargs=args.dataset_kwargs,
        split=args.split,
        slicing=slicing_options(args),
        model_name=args.model,
        weights=args.weights,
        engine=args.engine,
    )
    return int(out) if isinstance(out, int) else 0


def main(argv: list[str]) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    from detforge.engine.threads import configure_threads

    configure_threads()
    from detforge.engines import is_onnx_file, parse_engine_names

    parse_engine_names(args.engine)  # an unknown engine: one line and exit 2
    if (args.model is None) == (args.weights is not None and not is_onnx_file(args.weights)):
        parser.error(
            "--model and --weights go together (a registered model and its named weights); an exported "
            "--weights FILE.onnx needs no --model"
        )
    if args.track:
        if args.gt is not None or args.pred is not None:
            parser.error("--track evaluates a checkpoint on a video data set, not --gt/--pred files")
        args.no_fold_batchnorm = False
        return _evaluate_tracking(args, parser)  # user errors: one line and exit 2 (detforge.cli)
    if args.ckpt is not None or args.data is not None or args.weights is not None:
        if args.gt is not None or args.pred is not None:
            parser.error("use either --gt/--pred or --ckpt/--data, not both")
        if args.ckpt is not None and args.weights is not None:
            parser.error("give --ckpt or --model/--weights, not both")
        if args.ckpt is None and args.weights is None:
            parser.error("--data needs --ckpt (or --model NAME --weights W)")
        return _evaluate_checkpoint(args)  # user errors: one line and exit 2 (detforge.cli)
    if args.gt is None or args.pred is None:
        parser.error("give --gt GT.json and --pred RESULTS.json (or --ckpt CKPT [--data SPEC])")
    return _evaluate_files(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
