"""The dataset doctor: every check of ``detforge.data.checks`` run over a whole dataset, as one report.

For file-based readers (:class:`~detforge.data.base.DetectionDataset`) it reports what the reader skipped
while parsing, then reads every image file (missing, undecodable, size differing from the annotation,
duplicate bytes) and counts the kept boxes. Other datasets (the synthetic shapes) are checked sample by
sample. It also draws a grid of sample images with their boxes (``doctor_grid.png``).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from detforge.data.base import DetectionDataset
from detforge.data.checks import ISSUE_KINDS, IssueLog, check_labels, looks_normalized, validate_boxes
from detforge.io import decode_image_bytes

__all__ = ["DoctorReport", "draw_grid", "examine", "run_doctor"]

# COCO's object size buckets, by area in pixels.
SMALL_AREA, LARGE_AREA = 32**2, 96**2
# Generated datasets (no files) are checked on this many evenly spaced samples unless told otherwise.
DEFAULT_GENERATED_SAMPLES = 128


@dataclass
class DoctorReport:
    """What the doctor found. ``errors`` > 0 means the dataset needs fixing (the command exits 1)."""

    name: str
    num_images: int = 0
    images_checked: int = 0
    num_boxes: int = 0
    class_names: list[str] = field(default_factory=list)
    per_class: list[int] = field(default_factory=list)
    size_buckets: dict[str, int] = field(default_factory=lambda: {"small": 0, "medium": 0, "large": 0})
    empty_images: int = 0
    crowd_or_ignored: int = 0
    category_ids: list[int] | None = None
    issues: IssueLog = field(default_factory=lambda: IssueLog("dataset"))
    fatal: str | None = None
    grid_path: str | None = None

    @property
    def errors(self) -> int:
        return int(self.fatal is not None) + self.issues.errors()

    @property
    def classes_without_boxes(self) -> list[str]:
        return [n for n, c in zip(self.class_names, self.per_class) if c == 0]

    def to_text(self) -> str:
        """The report as plain text."""
        lines = [f"dataset doctor: {self.name}"]
        if self.fatal is not None:
            lines += [f"  ERROR: {self.fatal}", "verdict: 1 error"]
            return "\n".join(lines)
        checked = "" if self.images_checked == self.num_images else f" ({self.images_checked} checked)"
        lines.append(f"  images: {self.num_images}{checked}, empty: {self.empty_images}")
        in_checked = " in the checked images" if checked else ""
        lines.append(f"  boxes{in_checked}: {self.num_boxes} (crowd/ignored: {self.crowd_or_ignored})")
        b = self.size_buckets
        lines.append(f"  COCO sizes: small {b['small']}, medium {b['medium']}, large {b['large']}")
        lines.append(f"  classes: {len(self.class_names)}, labels 0..{max(len(self.class_names) - 1, 0)}")
        if self.category_ids is not None:
            ids = self.category_ids
            gaps = sorted(set(range(min(ids), max(ids) + 1)) - set(ids)) if ids else []
            gap_text = f"; id gaps {_short(gaps)} (remapped to contiguous labels)" if gaps else ""
            lines.append(f"  category ids: {_short(ids)}{gap_text}")
        width = max((len(n) for n in self.class_names), default=0)
        for label, (name, count) in enumerate(zip(self.class_names, self.per_class)):
            lines.append(f"    {label:>3} {name.ljust(width)} {count}")
        if self.classes_without_boxes:
            lines.append(f"  classes without boxes: {', '.join(self.classes_without_boxes)}")
        if self.issues:
            lines.append("  problems:")
            for kind, n in sorted(self.issues.counts.items(), key=lambda kv: (ISSUE_KINDS[kv[0]][0], kv[0])):
                severity, meaning = ISSUE_KINDS[kind]
                lines.append(f"    {severity.upper():7} {n:>6} {kind}: {meaning}")
                for where in self.issues.examples.get(kind, []):
                    lines.append(f"               - {where}")
        else:
            lines.append("  problems: none")
        if self.grid_path:
            lines.append(f"  sample grid: {self.grid_path}")
        n = self.errors
        lines.append(f"verdict: {n} error(s)" if n else "verdict: OK")
        return "\n".join(lines)


def _short(values: Sequence[int], limit: int = 12) -> str:
    values = list(values)
    text = ", ".join(map(str, values[:limit]))
    return f"[{text}{', ...' if len(values) > limit else ''}]"


def _count_boxes(
    report: DoctorReport, boxes: np.ndarray, labels: np.ndarray, area: np.ndarray | None
) -> None:
    """Add one image's kept boxes (``[N, 4]`` xyxy pixels) and labels (``[N]``) to the report's counts."""
    report.num_boxes += len(labels)
    report.empty_images += int(len(labels) == 0)
    valid = labels[(labels >= 0) & (labels < len(report.per_class))]
    for label, count in zip(*np.unique(valid, return_counts=True)):
        report.per_class[int(label)] += int(count)
    if area is None:
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    report.size_buckets["small"] += int((area < SMALL_AREA).sum())
    report.size_buckets["medium"] += int(((area >= SMALL_AREA) & (area < LARGE_AREA)).sum())
    report.size_buckets["large"] += int((area >= LARGE_AREA).sum())


def _examine_files(dataset: DetectionDataset, report: DoctorReport, indices: Sequence[int]) -> None:
    """Records parsed by a file reader: read every image file once, count the kept boxes."""
    report.issues.merge(dataset.issues)
    seen: dict[str, str] = {}
    for i in indices:
        record = dataset.records[i]
        path = record.image_path
        report.images_checked += 1
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            report.issues.add("missing_image", f"{record.source} -> {path}")
            continue
        digest = hashlib.blake2b(data, digest_size=16).hexdigest()
        if digest in seen:
            report.issues.add("duplicate_image", f"{path} (same bytes as {seen[digest]})")
        else:
            seen[digest] = path
        try:
            image = decode_image_bytes(data, dataset.mode, name=path)
        except ValueError as err:
            report.issues.add("unreadable_image", str(err))
            continue
        h, w = int(image.shape[-2]), int(image.shape[-1])
        if record.height is not None and (record.height, record.width) != (h, w):
            report.issues.add(
                "size_mismatch",
                f"{record.source}: annotation {record.height}x{record.width}, file {h}x{w} (h x w)",
            )
        iscrowd = record.iscrowd if record.iscrowd is not None else np.zeros(len(record.labels), bool)
        ignore = record.ignore if record.ignore is not None else np.zeros(len(record.labels), bool)
        report.crowd_or_ignored += int((iscrowd | ignore).sum())
        check_labels(
            record.labels, dataset.num_classes, report.issues, lambda j, r=record: f"{r.source} box {j}"
        )
        _count_boxes(report, record.boxes, record.labels, record.area)


def _examine_samples(dataset: Dataset, report: DoctorReport, indices: Sequence[int]) -> None:
    """Any dataset: take each sample and check its target against its image."""
    all_boxes, sizes = [], []
    seen: dict[str, int] = {}
    for i in indices:
        report.images_checked += 1
        try:
            image, target = dataset[i]
        except (OSError, ValueError) as err:
            report.issues.add("unreadable_image", f"sample {i}: {err}")
            continue
        h, w = int(image.shape[-2]), int(image.shape[-1])
        digest = hashlib.blake2b(image.detach().cpu().numpy().tobytes(), digest_size=16).hexdigest()
        if digest in seen:
            report.issues.add("duplicate_image", f"sample {i} (same pixels as sample {seen[digest]})")
        else:
            seen[digest] = i
        boxes = torch.as_tensor(target["boxes"]).reshape(-1, 4).numpy()
        labels = torch.as_tensor(target["labels"]).reshape(-1).numpy()
        image_id = target.get("image_id", i)
        where = lambda j, i=i, image_id=image_id: f"sample {i} (image_id {image_id}) box {j}"  # noqa: E731
        boxes, keep = validate_boxes(boxes, h, w, report.issues, where)
        if report.class_names:  # without class names there is no range to check against
            keep &= check_labels(labels, len(report.class_names), report.issues, where)
        all_boxes.append(boxes)
        sizes.append((h, w))
        for key in ("iscrowd", "ignore"):
            if key in target:
                report.crowd_or_ignored += int(torch.as_tensor(target[key]).bool().sum())
        area = target.get("area")
        area = torch.as_tensor(area).numpy()[keep] if area is not None else None
        _count_boxes(report, boxes[keep], labels[keep], area)
    if all_boxes and looks_normalized(np.concatenate(all_boxes), np.asarray(sizes)):
        report.issues.add("normalized_coords", f"{report.name}: every box coordinate is <= 1")


def _indices(n: int, max_images: int | None) -> list[int]:
    if max_images is None or max_images <= 0 or max_images >= n:
        return list(range(n))
    return np.unique(np.linspace(0, n - 1, max_images).round().astype(int)).tolist()


def examine(dataset: Dataset, name: str = "dataset", max_images: int | None = None) -> DoctorReport:
    """Check ``dataset`` and count what it holds.

    Args:
        dataset: a file reader (:class:`DetectionDataset`) or any dataset of ``(image, target)`` samples with
            ``class_names`` (or ``num_classes``).
        name: how the report names the dataset.
        max_images: check only this many evenly spaced images (None: all for file readers,
            ``DEFAULT_GENERATED_SAMPLES`` for generated datasets; 0: all).
    """
    class_names = list(getattr(dataset, "class_names", None) or [])
    if not class_names and hasattr(dataset, "num_classes"):
        class_names = [str(i) for i in range(int(dataset.num_classes))]
    report = DoctorReport(
        name=name, num_images=len(dataset), class_names=class_names, per_class=[0] * len(class_names)
    )
    report.issues = IssueLog(name)
    if isinstance(dataset, DetectionDataset):
        report.category_ids = list(getattr(dataset, "label_to_cat_id", None) or []) or None
        _examine_files(dataset, report, _indices(len(dataset), max_images))
    else:
        limit = DEFAULT_GENERATED_SAMPLES if max_images is None else max_images
        _examine_samples(dataset, report, _indices(len(dataset), limit))
    if report.num_images == 0:
        report.fatal = f"{name}: the dataset has no images"
    return report


def draw_grid(
    dataset: Dataset,
    path: str | os.PathLike,
    num_images: int = 16,
    cell: int = 256,
    class_names: Sequence[str] = (),
) -> str | None:
    """Draw up to ``num_images`` evenly spaced samples with their boxes into a PNG grid (4 per row).

    Returns the written path, or None when no sample could be read.
    """
    from PIL import Image
    from torchvision.transforms.v2 import functional as TF
    from torchvision.utils import draw_bounding_boxes, make_grid

    n = len(dataset)
    cells: list[Tensor] = []
    palette = ["red", "lime", "blue", "yellow", "magenta", "cyan", "orange", "white"]
    for i in _indices(n, max(num_images * 2, 1)):
        if len(cells) >= num_images:
            break
        try:
            image, target = dataset[i]
        except (OSError, ValueError):
            continue
        image = torch.as_tensor(image)
        if image.dtype != torch.uint8:
            image = (image.clamp(0, 1) * 255).round().to(torch.uint8)
        if image.shape[0] == 1:
            image = image.expand(3, -1, -1)
        h, w = image.shape[-2:]
        scale = cell / max(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        image = TF.resize(image, [nh, nw], antialias=True)
        boxes = torch.as_tensor(target["boxes"], dtype=torch.float32).reshape(-1, 4) * scale
        labels = torch.as_tensor(target["labels"]).reshape(-1).tolist()
        if len(boxes):
            names = [class_names[k] if 0 <= k < len(class_names) else str(k) for k in labels]
            colors = [palette[k % len(palette)] for k in labels]
            image = draw_bounding_boxes(image, boxes, labels=names, colors=colors, width=2)
        canvas = torch.zeros(3, cell, cell, dtype=torch.uint8)  # [3, cell, cell]
        canvas[:, :nh, :nw] = image
        cells.append(canvas)
    if not cells:
        return None
    grid = make_grid(torch.stack(cells), nrow=min(4, len(cells)), padding=2)  # [3, H, W]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid.permute(1, 2, 0).numpy()).save(path)
    return str(path)


def run_doctor(
    spec: str | Dataset,
    out_dir: str | os.PathLike = ".",
    split: str = "train",
    max_images: int | None = None,
    grid_images: int = 16,
) -> DoctorReport:
    """Build the dataset a spec names (or take a dataset), examine it and write ``doctor_grid.png``.

    A spec whose files cannot be read at all gives a report with ``fatal`` set instead of raising.
    """
    from detforge.data.spec import build_dataset

    name = spec if isinstance(spec, str) else type(spec).__name__
    if isinstance(spec, str):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # the reader's counts are in the report
                dataset = build_dataset(spec, split=split)
        except (OSError, ValueError) as err:
            return DoctorReport(name=name, fatal=str(err))
    else:
        dataset = spec
    report = examine(dataset, name=name, max_images=max_images)
    if grid_images > 0 and report.num_images:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            report.grid_path = draw_grid(
                dataset, Path(out_dir) / "doctor_grid.png", grid_images, class_names=report.class_names
            )
    return report
