"""Evaluate a checkpoint on a data set: the COCO table, a COCO results JSON and the stats dict.

``detforge val --ckpt C [--data SPEC]`` calls :func:`validate_checkpoint`. A checkpoint in a run folder is evaluated
with that run's data settings (``config.yaml``: the data spec and its data set options), so it reproduces the
run's final table. Predictions are mapped back to each
image's original size and written with the data set's original category ids, so the printed mAP equals a
pycocotools evaluation of the written JSON against the data set's annotation file.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from detforge.errors import InvalidValueError, MissingFileError

__all__ = [
    "check_checkpoint_file",
    "load_detector",
    "resolve_device",
    "run_data_config",
    "validate_checkpoint",
]


def resolve_device(device: str | None) -> torch.device:
    """``"auto"`` / None -> the first CUDA device when there is one, else the CPU; otherwise ``device`` as is.
    A device name torch does not know, or a CUDA device this machine does not have, raises
    :class:`~detforge.errors.InvalidValueError` naming it."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "gpu":
        device = "cuda"
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise InvalidValueError(f"--device {device!r}: not a device (auto, cpu, cuda, cuda:1, ...)") from err
    if resolved.type == "cuda" and (
        not torch.cuda.is_available() or (resolved.index or 0) >= torch.cuda.device_count()
    ):
        have = f"{torch.cuda.device_count()} CUDA device(s)" if torch.cuda.is_available() else "no CUDA"
        raise InvalidValueError(f"--device {device!r}: this machine has {have}")
    return resolved


def check_checkpoint_file(ckpt: str | Path) -> Path:
    """``ckpt`` as a Path when it is a file; :class:`~detforge.errors.MissingFileError` naming it otherwise."""
    path = Path(ckpt)
    if not path.is_file():
        why = "a folder, not a checkpoint file" if path.is_dir() else "no such checkpoint file"
        raise MissingFileError(f"{path}: {why}")
    return path


def load_detector(ckpt: str | Path, device: str | torch.device | None = None):
    """An ``ObjectDetector`` from a checkpoint (``weights_only=True``: a checkpoint cannot run code), in eval mode.

    Checkpoints from EMA runs hold the averaged weights, which are the ones loaded.
    """
    from detforge.models.detector import ObjectDetector

    path = check_checkpoint_file(ckpt)
    device = resolve_device(device) if not isinstance(device, torch.device) else device
    try:
        model = ObjectDetector.load_from_checkpoint(
            str(path), map_location=device, weights_only=True, compile_model=False
        )
    except (RuntimeError, KeyError, TypeError, EOFError, pickle.UnpicklingError) as err:
        # torch's messages run to several sentences ("... This is an internal miniz error. If you are ..."):
        # the first line up to its first full stop says what went wrong
        why = (str(err).strip().splitlines() or [""])[0].split(". ")[0] or "the file ends early"
        raise InvalidValueError(
            f"{path}: not a detforge ObjectDetector checkpoint, truncated or corrupt? ({type(err).__name__}: {why})"
        ) from err
    return model.to(device).eval()


def load_pretrained_detector(model: str, weights: str, device: str | torch.device | None = None):
    """An ``ObjectDetector`` for the registered ``model`` with its named ``weights`` (a tag such as ``"coco"``,
    or a file in their layout), in eval mode: what ``predict`` / ``val`` / ``export`` / ``bench`` run with
    ``--model NAME --weights W`` instead of ``--ckpt``."""
    from detforge.models.detector import ObjectDetector

    device = resolve_device(device) if not isinstance(device, torch.device) else device
    detector = ObjectDetector(model=model, weights=weights, compile_model=False, deterministic=False)
    return detector.to(device).eval()


def uses_own_preprocess(detector) -> bool:
    """Whether the detector's model came with its own input pre-processing (named weights: torchvision's
    resize and normalisation), which ``predict`` and ``val`` then follow on the images as they are."""
    return "_preprocess" in detector.model.__dict__


def label_map(model, dataset) -> dict[int, int] | None:
    """The model's label -> the data set's label, through category ids, when the model carries its weights'
    ``category_ids`` (torchvision's COCO ids) and the data set has its own (``label_to_cat_id``); None when
    the labels are the same."""
    model_ids = getattr(model, "category_ids", None)
    data_ids = getattr(dataset, "label_to_cat_id", None)
    if model_ids is None or not data_ids:
        return None
    pairs = data_ids.items() if isinstance(data_ids, dict) else enumerate(data_ids)  # a list: label -> id
    to_data = {int(cat): int(label) for label, cat in pairs}
    return {label: to_data[cat] for label, cat in enumerate(model_ids) if cat in to_data}


def _relabel(pred: dict, mapping: dict[int, int] | None) -> dict:
    """``pred`` with labels moved to the data set's, dropping classes the data set does not have."""
    if mapping is None:
        return pred
    lookup = torch.full((max(mapping) + 1 if mapping else 1,), -1, dtype=torch.int64)
    for src, dst in mapping.items():
        lookup[src] = dst
    labels = pred["labels"].cpu()
    new = torch.where(labels < len(lookup), lookup[labels.clamp(max=len(lookup) - 1)], -1)
    keep = new >= 0
    out = {k: v[keep.to(v.device)] for k, v in pred.items()}
    out["labels"] = new[keep].to(pred["labels"].device)
    return out


def _default_imgsz(model) -> int:
    size = getattr(model.model, "default_input_size", None)
    return int(max(size)) if size else 640


def run_data_config(ckpt: str | Path) -> dict[str, Any]:
    """The ``data`` section of the ``config.yaml`` beside ``ckpt`` (a ``detforge train`` run folder), or {}."""
    import yaml

    path = Path(ckpt).parent / "config.yaml"
    if not path.is_file():
        return {}
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InvalidValueError(f"{path}: not a readable run configuration ({first})") from err
    section = config.get("data") if isinstance(config, dict) else None
    return section if isinstance(section, dict) else {}


def validate_checkpoint(
    ckpt: str | Path,
    data: str | None = None,
    imgsz: int | None = None,
    batch: int = 16,
    device: str | None = "auto",
    out_dir: str | Path | None = None,
    workers: int = 0,
    verbose: bool = True,
    dataset_kwargs: dict[str, Any] | None = None,
    split: str = "val",
    slicing: dict[str, Any] | None = None,
    model_name: str | None = None,
    weights: str | None = None,
    engine: str = "torch",
) -> dict[str, Any]:
    """Evaluate ``ckpt`` on ``data``'s validation (or test) split; print the COCO table, write the COCO results JSON.

    Args:
        ckpt: an ``ObjectDetector`` checkpoint (``best.ckpt`` / ``last.ckpt`` of a run).
        data: a dataset spec string (``synthetic``, ``coco:ann.json:images``, ...); None: the training run's
            (``config.yaml`` beside the checkpoint).
        imgsz: network input size (default: the training run's ``data.imgsz`` when the checkpoint knows it,
            else the model's default input size).
        batch / workers: evaluation batch size and DataLoader workers.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        out_dir: where ``predictions.json`` (COCO results, original category ids), ``confusion_matrix.png``
            (at the F1-best confidence), ``f1_curve.png`` and ``report.html`` (with its ``report/`` pictures)
            go. Default: ``predictions.json`` in the checkpoint's folder, the plots and the page in its
            ``val_report/`` subfolder (never over the run folder's own).
        verbose: print the table.
        dataset_kwargs: data set options (``DetectionDataModule(dataset_kwargs=...)``); None: the training run's
            when ``data`` is the run's data spec (e.g. the synthetic object sizes), else none.
        split: ``"val"``, or ``"test"``: the run's ``test_data`` (``--data.test_data``) when ``data`` is None,
            else ``data`` used as the test set.
        slicing: :func:`detforge.slicing.sliced_predict` keywords (``slice_size``, ``overlap``, ``merge``, ...)
            to evaluate sliced inference: the images are read at their own size (no resize to ``imgsz``) and
            cut into tiles, ``batch`` tiles per forward; the whole-image pass (``full_image_pass``) runs at
            ``imgsz``. None: the usual resize to ``imgsz``.
        model_name, weights: instead of ``ckpt``, a registered model with its named weights (``"coco"`` or a
            file in their layout; ``data`` is then needed): the images are read at their own size and the
            model's own pre-processing runs (:meth:`~detforge.models.base.Detector.predict`); its labels are
            mapped to the data set's through the category ids (COCO's 90 ids to a COCO file's classes).
            ``weights`` ending in ``.onnx`` is an exported file (``detforge export``; no ``model_name``), run
            with ``engine="onnxruntime"``.
        engine: ``"torch"`` (eager) or ``"onnxruntime"`` (:mod:`detforge.engines`): the exported ``weights``
            file, or for ``ckpt`` its cached export beside it; the same pre- and post-processing either way.

    Returns:
        The metric's stats: ``map``, ``map_50``, ``map_75``, ``map_small`` ... ``mar_100``, ``map_per_class``,
        ``classes`` (Tensors), plus ``results_json`` (the written path), ``detection_summary``
        (:class:`~detforge.metrics.DetectionSummary`: F1 curve, best confidence, confusion matrix) and, with
        ``out_dir``, ``plots`` (the two PNGs and ``report.html``).
    """
    from detforge.data.datamodule import DetectionDataModule
    from detforge.engine.callbacks import atomic_write, format_table
    from detforge.engine.report import gallery_images, write_report
    from detforge.engines import engine_detections, is_onnx_file, load_command_detector, open_engine
    from detforge.metrics import DetectionMAP, plot_detection_summary, write_coco_results
    from detforge.metrics.confusion import image_errors
    from detforge.slicing.predict import sliced_predict
    from detforge.targets import image_sizes_of, metric_targets, to_original_size

    if split not in ("val", "test"):
        raise ValueError(f"split must be one of ('val', 'test'), got {split!r}")
    if (ckpt is None) == (weights is None):
        raise ValueError("give a checkpoint (--ckpt) or a model with named weights (--model NAME --weights W)")
    if ckpt is not None:
        check_checkpoint_file(ckpt)  # before its run's config.yaml: a missing file says so
    run = run_data_config(ckpt) if ckpt is not None else {}
    if data is None and ckpt is None:
        raise InvalidValueError(
            f"model {model_name!r} with weights {weights!r}: give the data set (--data SPEC)"
        )
    if data is None:
        data = run.get("data" if split == "val" else "test_data")
        if not isinstance(data, str):
            raise InvalidValueError(
                f"{ckpt}: no config.yaml with a {'data' if split == 'val' else 'test_data'} spec beside it; "
                "give the data set (--data SPEC)"
            )
    if dataset_kwargs is None:
        dataset_kwargs = (run.get("dataset_kwargs") or {}) if data in (run.get("data"), run.get("test_data")) else {}
    model = load_command_detector(ckpt, model_name, weights, device)
    own_preprocess = uses_own_preprocess(model) and slicing is None
    dev = model.device
    imgsz = imgsz or model.hparams.get("imgsz") or _default_imgsz(model)
    if engine == "onnxruntime" and (own_preprocess or slicing is not None):
        why = "sliced inference" if slicing is not None else "named weights with their own pre-processing"
        raise InvalidValueError(f"--engine onnxruntime: {why} runs with --engine torch only")
    onnx = str(weights) if is_onnx_file(weights) else None
    runner = open_engine(engine, model, int(imgsz), ckpt=ckpt, onnx=onnx, log=print if verbose else None)
    dm = DetectionDataModule(
        data=data,
        imgsz=imgsz,
        batch_size=batch,
        num_workers=workers,
        dataset_kwargs=dataset_kwargs,
        test_data=data if split == "test" else None,
    )
    dm.setup("validate" if split == "val" else "test")
    dataset = dm.val_dataset if split == "val" else dm.test_dataset
    if slicing is not None or own_preprocess:  # the images as they are: sliced_predict / predict resize them
        if not hasattr(dataset, "transforms"):
            raise ValueError(f"this evaluation needs a detforge data set (with .transforms), got {dataset!r}")
        dataset.transforms = None
    if slicing is not None:
        slicing = {"full_image_size": imgsz, **{k: v for k, v in slicing.items() if v is not None}}
    loader = dm.val_dataloader() if split == "val" else dm.test_dataloader()
    mapping = label_map(model.model, dataset)
    if mapping is None and getattr(dataset, "num_classes", model.num_classes) != model.num_classes:
        raise InvalidValueError(
            f"{ckpt}: the model has {model.num_classes} classes but data {data!r} has {dataset.num_classes}"
        )
    metric = DetectionMAP(class_metrics=True).to(dev)
    all_preds: list[dict] = []
    image_ids: list[int] = []

    def predict(images: torch.Tensor, sizes) -> list[dict]:
        """Detections of ``images`` (Tensor[B, C, H, W], each (h, w) of ``sizes`` real) in their pixels."""
        images = images.to(dev)
        if slicing is not None:
            crops = [image[:, :h, :w] for image, (h, w) in zip(images, sizes, strict=True)]
            return sliced_predict(model, crops, batch_size=batch, **slicing)
        if own_preprocess:
            preds = model.model.predict([image[:, :h, :w] for image, (h, w) in zip(images, sizes, strict=True)])
            return [_relabel(p, mapping) for p in preds]
        return engine_detections(runner, model.model, images, sizes)

    with torch.no_grad():
        for images, targets in loader:
            preds = predict(images, image_sizes_of(targets, images))
            preds = [{k: v.cpu() for k, v in p.items()} for p in to_original_size(preds, targets)]
            gts = metric_targets(targets)
            metric.update(preds, gts)
            all_preds += preds
            image_ids += [int(t["image_id"]) for t in targets]
    stats = dict(metric.compute())
    stats["coco_eval"] = metric.last_result
    num_classes = model.num_classes if mapping is None else getattr(dataset, "num_classes", None)
    stats["detection_summary"] = summary = metric.summary(num_classes)  # F1 curve, confusion matrix
    out = Path(out_dir) if out_dir is not None else (Path(ckpt).parent if ckpt is not None else Path("runs/val"))
    label_to_cat_id = getattr(dataset, "label_to_cat_id", None)
    stats["results_json"] = str(
        write_coco_results(all_preds, image_ids, label_to_cat_id, out / "predictions.json")
    )
    names = (model.class_names if mapping is None else None) or getattr(dataset, "class_names", None)
    report_dir = out if out_dir is not None else out / "val_report"  # never over a run folder's own plots
    report_dir.mkdir(parents=True, exist_ok=True)
    stats["plots"] = [str(p) for p in plot_detection_summary(summary, report_dir, names, write=atomic_write)]
    missed, false = image_errors(metric.last_inputs, summary.confusion_conf)
    gallery = gallery_images(report_dir, predict, dataset, missed, false, summary.confusion_conf, names)
    what = f"checkpoint {ckpt}" if ckpt is not None else f"{model_name} with weights {weights}"
    notes = [f"{what} on {data or 'the run data'} ({split} split, {len(dataset)} images)"]
    page = write_report(report_dir, stats, names, gallery, title="detforge val", notes=notes)
    stats["plots"].append(str(page))
    if verbose:
        print(format_table(stats, names))
        print(f"COCO results: {stats['results_json']}")
        for path in stats.get("plots", []):
            print(f"written: {path}")
    return stats
