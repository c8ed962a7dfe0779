"""What a training run leaves in its folder besides checkpoints: curves, PR curves, a grid of predictions,
and the final COCO table on the console.

Every file is written to a temporary name in the same folder and renamed into place, so a killed run never
leaves a half-written file behind; checkpoints too (``AtomicCheckpoint``, ``LastCheckpoint``). A full disk or
an unwritable folder is a ``RunError`` naming the file, and the previous file stays as it was.
"""

from __future__ import annotations

import csv
import errno
import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any
from weakref import proxy

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor

from detforge.engine.trainer import RunError, check_run_dir_writable
from detforge.metrics.coco import COCO_STAT_NAMES

__all__ = [
    "AtomicCheckpoint",
    "CheckRunFolder",
    "LastCheckpoint",
    "RunArtifacts",
    "atomic_write",
    "draw_ground_truth",
    "draw_predictions",
    "plot_curves",
    "prediction_grid",
]

# Write failures the user fixes (free space, permissions), reported as one line instead of a traceback.
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS})


def _run_error(path: str | Path, err: OSError) -> RunError:
    return RunError(f"cannot write {path}: {err.strerror or err}")


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` and rename the result to ``path`` (same folder, so the rename is atomic).
    A full disk or a permission error is a ``RunError`` naming ``path``; ``path`` is then left as it was."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=path.suffix, dir=path.parent)
    except OSError as err:
        if err.errno in DISK_ERRNOS:
            raise _run_error(path, err) from err
        raise
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(err, OSError) and err.errno in DISK_ERRNOS:
            raise _run_error(path, err) from err
        raise
    return path


class AtomicCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that writes every checkpoint to a temporary file in the same folder and renames it
    into place (``os.replace``), so a run killed while saving keeps the previous checkpoint intact.

    Lightning writes through an fsspec transaction: to a file in the system's temporary folder, then
    ``shutil.move`` to the final path, which is a copy (not atomic) whenever the temporary folder is on
    another file system. A full disk or an unwritable folder is a ``RunError`` naming the checkpoint.
    """

    TMP_PREFIX = ".tmp-"

    @property
    def state_key(self) -> str:
        # as a plain ModelCheckpoint's, so runs saved before this class existed resume with their best score
        key = super().state_key
        return (
            key.replace(type(self).__qualname__, "ModelCheckpoint", 1)
            if type(self) is AtomicCheckpoint
            else key
        )

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        final = Path(filepath)
        tmp = final.with_name(f"{self.TMP_PREFIX}{final.name}.{os.getpid()}")
        try:
            trainer.save_checkpoint(tmp, self.save_weights_only)
            if trainer.is_global_zero:
                os.replace(tmp, final)
        except OSError as err:
            if trainer.is_global_zero and tmp.exists():
                tmp.unlink()
            if err.errno in DISK_ERRNOS:
                raise _run_error(final, err) from err
            raise
        # what ModelCheckpoint._save_checkpoint does after saving
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = str(final)
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if trainer.is_global_zero and self.dirpath and os.path.isdir(self.dirpath):
            for stale in Path(self.dirpath).glob(f"{self.TMP_PREFIX}*.ckpt.*"):  # left by a killed run
                stale.unlink(missing_ok=True)


class LastCheckpoint(AtomicCheckpoint):
    """``last.ckpt`` (model, optimizer, scheduler, EMA, loop state), written atomically at the end of every
    training epoch (validated or not) and, inside an epoch, whenever ``every_minutes`` have passed since the
    last save, so ``--resume last`` after a crash or a ``kill -9`` loses at most an epoch or ``every_minutes``.

    A checkpoint saved inside an epoch resumes inside it: the global step, optimizer, schedule and EMA continue
    exactly, and Lightning finishes the epoch with the batches that were left; a plain ``DataLoader`` cannot
    restore its position, so those batches are drawn from a fresh shuffle (Lightning warns about this).

    Args:
        dirpath: the run folder.
        every_minutes: the most minutes of training between two saves inside an epoch (0: every step).
        filename: the checkpoint's name without ``.ckpt``.
    """

    def __init__(self, dirpath: str | Path, every_minutes: float = 5.0, filename: str = "last") -> None:
        if every_minutes < 0:
            raise ValueError(f"every_minutes must be >= 0, got {every_minutes}")
        super().__init__(
            dirpath=str(dirpath),
            filename=filename,
            monitor=None,
            save_top_k=1,
            save_last=False,
            train_time_interval=timedelta(minutes=every_minutes),
            save_on_train_epoch_end=True,
            auto_insert_metric_name=False,
            enable_version_counter=False,
        )
        self.every_minutes = every_minutes

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # ModelCheckpoint's own epoch-end save is off when train_time_interval is set (they are exclusive)
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_topk_checkpoint(trainer, self._monitor_candidates(trainer))
            self._last_time_checked = time.monotonic()


class CheckRunFolder(L.Callback):
    """At the start of ``fit`` (rank 0), before anything is written: the run folder must be writable, else a
    ``RunError`` naming it."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and trainer.is_global_zero:
            check_run_dir_writable(self.run_dir)


def _read_metrics_csv(path: Path) -> dict[str, list[tuple[float, float]]]:
    """Columns of Lightning's ``metrics.csv`` as ``{name: [(step, value), ...]}`` (empty cells skipped)."""
    series: dict[str, list[tuple[float, float]]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            step = float(row.get("step") or 0)
            for key, value in row.items():
                if key in ("step", "epoch") or value in ("", None):
                    continue
                series.setdefault(key, []).append((step, float(value)))
    return series


def plot_curves(metrics_csv: str | Path, out_path: str | Path) -> Path | None:
    """Plot losses (train and val) and mAP from a run's ``metrics.csv`` into one PNG. None if nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = _read_metrics_csv(Path(metrics_csv))
    loss_keys = [k for k in series if k.endswith("/loss") or k.endswith("_loss")]
    map_keys = [k for k in ("val/map", "val/map_50", "val/map_75") if k in series]
    if not loss_keys and not map_keys:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for key in sorted(loss_keys):
        steps, values = zip(*series[key], strict=True)
        axes[0].plot(steps, values, label=key, marker="." if len(steps) < 30 else None)
    axes[0].set(title="losses", xlabel="step", yscale="log" if loss_keys else "linear")
    for key in map_keys:
        steps, values = zip(*series[key], strict=True)
        axes[1].plot(steps, values, label=key, marker="o")
    axes[1].set(title="validation mAP", xlabel="step", ylim=(0, 1))
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        return atomic_write(out_path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    finally:
        plt.close(fig)


def draw_predictions(
    image: Tensor, pred: dict[str, Tensor], class_names: list[str] | None = None, score_thresh: float = 0.3
) -> Tensor:
    """Draw ``pred`` (boxes Tensor[K, 4] xyxy pixels of ``image``, scores, labels) on ``image``
    (Tensor[C, H, W] float in [0, 1], C = 1 or 3); returns uint8 Tensor[3, H, W]. ``scores=None``: every box,
    labelled without a score (how :func:`draw_ground_truth` draws targets)."""
    from torchvision.utils import draw_bounding_boxes

    img = (image.detach().float().clamp(0, 1) * 255).to(torch.uint8).cpu()
    if img.shape[0] == 1:
        img = img.expand(3, -1, -1)
    if pred["scores"] is None:  # ground truth: every box, names without scores
        boxes, labels = pred["boxes"], pred["labels"].tolist()
        names = [f"{class_names[c] if class_names else c}" for c in labels]
    else:
        keep = pred["scores"].detach().cpu() >= score_thresh
        boxes = pred["boxes"].detach().float().cpu()[keep]
        labels = pred["labels"].detach().cpu()[keep].tolist()
        scores = pred["scores"].detach().cpu()[keep].tolist()
        names = [f"{class_names[c] if class_names else c} {s:.2f}" for c, s in zip(labels, scores, strict=True)]
    drawable = (boxes[:, 2] >= boxes[:, 0]) & (boxes[:, 3] >= boxes[:, 1])  # [K]: inverted / NaN boxes have no picture
    if not drawable.all():
        keep = drawable.tolist()
        boxes = boxes[drawable]
        labels = [c for c, k in zip(labels, keep, strict=True) if k]
        names = [n for n, k in zip(names, keep, strict=True) if k]
    if boxes.numel() == 0:
        return img.contiguous()
    palette = ["#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6"]
    colors = [palette[c % len(palette)] for c in labels]
    return draw_bounding_boxes(img, boxes, labels=names, colors=colors, width=2)


def draw_ground_truth(image: Tensor, target: dict[str, Tensor], class_names: list[str] | None = None) -> Tensor:
    """Draw ``target``'s boxes (Tensor[N, 4] xyxy pixels of ``image``) with their class names on ``image``
    (Tensor[C, H, W] float in [0, 1]); returns uint8 Tensor[3, H, W]. Ignored / crowd boxes are drawn too."""
    boxes = target["boxes"].detach().float().cpu().reshape(-1, 4)
    labels = target["labels"].detach().cpu().reshape(-1)
    return draw_predictions(image, {"boxes": boxes, "labels": labels, "scores": None}, class_names, 0.0)


def prediction_grid(
    images: list[Tensor],
    preds: list[dict],
    class_names: list[str] | None = None,
    targets: list[dict] | None = None,
    gap: int = 4,
) -> Tensor:
    """Images with their predictions drawn, tiled in a grid: uint8 Tensor[3, H', W'].

    With ``targets`` each tile is the ground truth (left) beside the predictions (right) of one image,
    ``gap`` white pixels apart, so what the model misses shows at once.
    """
    from torchvision.utils import make_grid

    drawn = [draw_predictions(img, p, class_names) for img, p in zip(images, preds, strict=True)]
    if targets is not None:
        truth = [draw_ground_truth(img, t, class_names) for img, t in zip(images, targets, strict=True)]
        drawn = [_side_by_side(g, d, gap) for g, d in zip(truth, drawn, strict=True)]
    h = max(d.shape[-2] for d in drawn)
    w = max(d.shape[-1] for d in drawn)
    padded = [torch.nn.functional.pad(d, (0, w - d.shape[-1], 0, h - d.shape[-2])) for d in drawn]
    return make_grid(padded, nrow=max(1, math.ceil(math.sqrt(len(padded)))), padding=4, pad_value=255)


def _side_by_side(left: Tensor, right: Tensor, gap: int) -> Tensor:
    """Two uint8 Tensor[3, H, W] panels of one image next to each other with a white gap: [3, H, 2W + gap]."""
    spacer = torch.full((3, left.shape[-2], gap), 255, dtype=left.dtype)
    return torch.cat([left, spacer, right], dim=-1)


def _save_png(tensor: Tensor, path: Path) -> Path:
    from PIL import Image

    array = tensor.permute(1, 2, 0).contiguous().numpy()  # [H, W, 3] uint8
    return atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))


class RunArtifacts(L.Callback):
    """At the end of ``fit`` (rank 0): ``curves.png`` (losses, mAP), ``pr_curves.png`` when the metric gives
    precision arrays, ``confusion_matrix.png`` and ``f1_curve.png`` when it gives a detection summary
    (:meth:`detforge.metrics.DetectionMAP.summary`), ``val_predictions.png`` (a grid of validation images: ground
    truth beside the detections), ``results.json`` (the final validation stats, with ``best_conf``, ``f1``,
    ``confusion_matrix`` and ``class_names``) and the COCO table on the console.

    Args:
        run_dir: the run folder.
        num_images: how many validation images go into the prediction grid.
        print_table: print the COCO table when training ends.
    """

    def __init__(self, run_dir: str | Path, num_images: int = 16, print_table: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.num_images = num_images
        self.print_table = print_table
        self.written: list[Path] = []

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for logger in trainer.loggers:
            logger.save()
        metrics_csv = self.run_dir / "metrics.csv"
        if metrics_csv.is_file():
            self._keep(plot_curves(metrics_csv, self.run_dir / "curves.png"))
        stats = getattr(pl_module, "last_val_stats", None)
        class_names = getattr(pl_module, "class_names", None)
        if stats:
            self._keep(self._write_results(stats, class_names))
            self._keep(self._plot_pr(stats, class_names))
            self.written += self._plot_summary(stats, class_names)
            if self.print_table:
                print(format_table(stats, class_names))
        self._keep(self._prediction_grid(trainer, pl_module, class_names))
        from detforge.engine.report import write_run_report  # last: the page shows the pictures above

        dataset = getattr(trainer.datamodule, "val_dataset", None) if trainer.datamodule is not None else None
        self._keep(write_run_report(self.run_dir, pl_module, dataset, trainer.world_size))

    def _keep(self, path: Path | None) -> None:
        if path is not None:
            self.written.append(path)

    def _write_results(self, stats: dict[str, Any], class_names: list[str] | None = None) -> Path:
        skip = ("coco_eval", "detection_summary")
        plain = {k: v.tolist() if isinstance(v, Tensor) else v for k, v in stats.items() if k not in skip}
        if stats.get("detection_summary") is not None:
            plain.update(stats["detection_summary"].results(class_names))
        text = json.dumps(plain, indent=2)
        return atomic_write(self.run_dir / "results.json", lambda tmp: Path(tmp).write_text(text))

    def _plot_pr(self, stats: dict[str, Any], class_names: list[str] | None) -> Path | None:
        from detforge.metrics import plot_pr_curves

        result = stats.get("coco_eval")
        if result is None:
            return None
        path = self.run_dir / "pr_curves.png"
        return atomic_write(path, lambda tmp: plot_pr_curves(result, tmp, class_names=class_names))

    def _plot_summary(self, stats: dict[str, Any], class_names: list[str] | None) -> list[Path]:
        from detforge.metrics import plot_detection_summary

        summary = stats.get("detection_summary")
        if summary is None:
            return []
        return plot_detection_summary(summary, self.run_dir, class_names, atomic_write)

    def _prediction_grid(self, trainer: L.Trainer, pl_module: L.LightningModule, class_names) -> Path | None:
        datamodule = trainer.datamodule
        dataset = getattr(datamodule, "val_dataset", None) if datamodule is not None else None
        if dataset is None or len(dataset) == 0 or self.num_images <= 0:
            return None
        from detforge.data.datamodule import detection_collate
        from detforge.targets import image_sizes_of

        samples = [dataset[i] for i in range(min(self.num_images, len(dataset)))]
        images, targets = detection_collate(samples)  # [N, C, H, W]
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            batch = images.to(pl_module.device)
            preds = pl_module.predict(batch, image_sizes_of(targets, batch))
        pl_module.train(was_training)
        images = [
            img[:, : int(t["size"][0]), : int(t["size"][1])] for img, t in zip(images, targets, strict=True)
        ]
        grid = prediction_grid(images, preds, class_names, targets=targets)  # GT | predictions per image
        return _save_png(grid, self.run_dir / "val_predictions.png")


def format_table(stats: dict[str, Any], class_names: list[str] | None = None) -> str:
    """The 12-line COCO summary (pycocotools' order) plus per-class AP for a metric's ``compute()`` dict."""
    from detforge.metrics import format_coco_table

    numbers = [float(stats.get(key, -1.0)) for key in COCO_STAT_NAMES]
    per_class = stats.get("map_per_class")
    classes = stats.get("classes")
    per_class_ap = None
    if (
        isinstance(per_class, Tensor)
        and isinstance(classes, Tensor)
        and per_class.numel() == classes.numel() > 0
    ):
        per_class_ap = {
            int(c): float(a)
            for c, a in zip(classes.reshape(-1).tolist(), per_class.reshape(-1).tolist(), strict=True)
        }
    return format_coco_table(numbers, per_class_ap=per_class_ap, class_names=class_names)
