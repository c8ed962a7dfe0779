"""Validation shared by the dataset readers and ``detforge doctor``.

Readers raise ``ValueError`` naming the file (and record) when a whole file is unusable. When only one record
is bad they skip exactly that record, count it in an :class:`IssueLog` kept on the dataset
(``dataset.issues``, ``dataset.skipped``) and emit one warning per reader naming the first few records.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

__all__ = [
    "ISSUE_KINDS",
    "IssueLog",
    "check_labels",
    "looks_normalized",
    "validate_boxes",
]

# kind -> (severity, what it means). "error": the record was skipped or the data is wrong;
# "warning": the data was repaired (clipped) or looks suspicious but is used.
ISSUE_KINDS: dict[str, tuple[str, str]] = {
    "missing_image": ("error", "image listed but missing on disk (skipped)"),
    "unreadable_image": ("error", "image file cannot be decoded"),
    "bad_record": ("error", "malformed annotation record (skipped)"),
    "missing_size": ("error", "annotation gives no image size (skipped)"),
    "unknown_image": ("error", "annotation refers to an image id not in the image list (skipped)"),
    "unknown_category": ("error", "category id or name not in the category list (skipped)"),
    "label_out_of_range": ("error", "class index outside [0, num_classes) (skipped)"),
    "nan_box": ("error", "box with NaN or infinite coordinates (skipped)"),
    "degenerate_box": ("error", "box with width or height <= 0 (skipped)"),
    "outside_box": ("error", "box entirely outside its image (skipped)"),
    "missing_mask": ("error", "image without its instance mask (skipped)"),
    "normalized_coords": ("error", "all coordinates <= 1 where pixels are expected (looks normalized)"),
    "size_mismatch": ("error", "annotated image size differs from the file on disk"),
    "clipped_box": ("warning", "box partly outside its image (clipped to the image)"),
    "duplicate_image": ("warning", "the same image bytes appear more than once"),
}


class IssueLog:
    """Counts problems of each kind found in one dataset and remembers the first few records of each.

    Args:
        name: the dataset's name in messages (usually its annotation file).
        max_examples: how many records to remember per kind.
    """

    def __init__(self, name: str, max_examples: int = 5) -> None:
        self.name = name
        self.max_examples = max_examples
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}

    def add(self, kind: str, where: str) -> None:
        """Count one problem of ``kind`` at record ``where`` (e.g. ``"instances.json: annotations[17]"``)."""
        if kind not in ISSUE_KINDS:
            raise ValueError(f"unknown issue kind {kind!r}; known: {sorted(ISSUE_KINDS)}")
        self.counts[kind] += 1
        examples = self.examples.setdefault(kind, [])
        if len(examples) < self.max_examples:
            examples.append(where)

    def add_many(self, kind: str, indices: Sequence[int] | np.ndarray, where: Callable[[int], str]) -> None:
        """Count ``len(indices)`` problems; ``where(i)`` names record ``i`` (called for the first few only)."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if kind not in ISSUE_KINDS:
            raise ValueError(f"unknown issue kind {kind!r}; known: {sorted(ISSUE_KINDS)}")
        self.counts[kind] += len(indices)
        examples = self.examples.setdefault(kind, [])
        for i in indices[: max(0, self.max_examples - len(examples))]:
            examples.append(where(int(i)))

    def merge(self, other: IssueLog) -> None:
        for kind, n in other.counts.items():
            self.counts[kind] += n
            examples = self.examples.setdefault(kind, [])
            examples.extend(other.examples.get(kind, [])[: self.max_examples - len(examples)])

    @property
    def skipped(self) -> dict[str, int]:
        """Counts of the error-level problems: records or boxes the reader skipped, or data that is wrong."""
        return {k: n for k, n in self.counts.items() if ISSUE_KINDS[k][0] == "error" and n}

    def errors(self) -> int:
        return sum(self.skipped.values())

    def __bool__(self) -> bool:
        return bool(+self.counts)

    def summary(self) -> str:
        """One line per kind: count, meaning and the first records, e.g. for warnings and reports."""
        lines = []
        for kind, n in sorted(self.counts.items()):
            if not n:
                continue
            first = ", ".join(self.examples.get(kind, []))
            more = ", ..." if n > len(self.examples.get(kind, [])) else ""
            lines.append(f"{n} x {kind}: {ISSUE_KINDS[kind][1]}; first: {first}{more}")
        return "\n".join(lines)

    def warn(self, stacklevel: int = 3) -> None:
        """Emit one ``UserWarning`` summarising everything counted (nothing when the log is empty)."""
        if self:
            total = sum(self.counts.values())
            warnings.warn(f"{self.name}: {total} problem(s) found\n{self.summary()}", stacklevel=stacklevel)


CLIP_TOLERANCE_PX = 1e-3


def validate_boxes(
    boxes: np.ndarray,
    height: int | None,
    width: int | None,
    log: IssueLog,
    where: Callable[[int], str],
) -> tuple[np.ndarray, np.ndarray]:
    """Check xyxy pixel boxes of one image; clip the ones partly outside, flag the ones to skip.

    Args:
        boxes: ``[N, 4]`` xyxy pixels (any float dtype).
        height, width: the image size, or None when unknown (then only NaN and degenerate are checked).
        log: where the problems are counted.
        where: names box ``i`` of this image for messages.

    Returns:
        ``boxes`` (``[N, 4]`` float32, clipped to the image) and ``keep`` (``[N]`` bool: False = skip).
    """
    # Checked in float32, the dtype they are kept in, so a box cannot collapse after the checks.
    with np.errstate(over="ignore"):
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).astype(np.float32)
    finite = np.isfinite(boxes).all(axis=1)
    with np.errstate(invalid="ignore"):
        degenerate = finite & ((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1]))
    keep = finite & ~degenerate
    for kind, bad in (("nan_box", ~finite), ("degenerate_box", degenerate)):
        if bad.any():
            log.add_many(kind, np.flatnonzero(bad), where)
    if height is not None and width is not None:
        x1, y1, x2, y2 = boxes.T
        with np.errstate(invalid="ignore"):
            outside = keep & ((x2 <= 0) | (y2 <= 0) | (x1 >= width) | (y1 >= height))
            # Overshoot within CLIP_TOLERANCE_PX is float rounding of a border box (YOLO's normalised
            # coordinates, resized images): clipped silently; anything more is counted.
            tol = CLIP_TOLERANCE_PX
            partial = keep & ~outside & ((x1 < -tol) | (y1 < -tol) | (x2 > width + tol) | (y2 > height + tol))
            rounding = keep & ~outside & ~partial & ((x1 < 0) | (y1 < 0) | (x2 > width) | (y2 > height))
        if outside.any():
            log.add_many("outside_box", np.flatnonzero(outside), where)
            keep &= ~outside
        if partial.any():
            log.add_many("clipped_box", np.flatnonzero(partial), where)
        if partial.any() or rounding.any():
            boxes = boxes.copy()
            np.clip(boxes[:, 0::2], 0, width, out=boxes[:, 0::2])
            np.clip(boxes[:, 1::2], 0, height, out=boxes[:, 1::2])
    return boxes, keep


def check_labels(
    labels: np.ndarray, num_classes: int, log: IssueLog, where: Callable[[int], str]
) -> np.ndarray:
    """``[N]`` bool: which labels lie in ``[0, num_classes)``; the others are counted as out of range."""
    labels = np.asarray(labels).reshape(-1)
    ok = (labels >= 0) & (labels < num_classes)
    if not ok.all():
        bad = np.flatnonzero(~ok)
        log.add_many("label_out_of_range", bad, where)
    return ok


def looks_normalized(boxes: np.ndarray, sizes: np.ndarray) -> bool:
    """True when every coordinate of ``boxes`` (``[N, 4]``) is <= 1 (and some are fractional) while some
    image (``sizes`` ``[M, 2]`` h, w) is larger than 2 pixels: a sign that normalized coordinates were written
    where pixels belong."""
    boxes = np.asarray(boxes).reshape(-1, 4)
    sizes = np.asarray(sizes).reshape(-1, 2)
    if len(boxes) == 0 or len(sizes) == 0:
        return False
    finite = boxes[np.isfinite(boxes).all(axis=1)]
    fractional = bool((finite != np.round(finite)).any())  # [0, 0, 1, 1] is a real one-pixel box
    return bool(len(finite) and np.abs(finite).max() <= 1.0 and fractional and sizes.max() > 2)
