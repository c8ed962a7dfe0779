"""MOT metrics: HOTA (DetA, AssA, LocA, ...), CLEAR (MOTA, MOTP, ID switches, fragmentations, MT/PT/ML) and
Identity (IDF1, IDP, IDR), per sequence and combined over sequences, equal to TrackEval's.

Inputs are per-frame dicts, frame number (1-based) -> dict, as :func:`detforge.data.mot.read_mot_txt` returns:
ground truth with ``boxes`` (Tensor[N, 4] xyxy pixels) and ``track_ids`` (Tensor[N]), optionally
``considered`` (bool [N]) and ``labels`` (int64 [N], MOT class - 1); predictions with ``boxes`` and
``track_ids`` (``scores`` are not used, as in TrackEval; rows with a negative id, unconfirmed detections, are
not scored). A frame missing from a dict has no boxes. Similarity is the IoU, computed in float64.

Ground truth is prepared as TrackEval's ``MotChallenge2DBox`` does, chosen by ``protocol``:

- ``"all"`` (TrackEval with ``DO_PREPROC=False``): every considered gt box is scored, whatever its class;
- ``"mot17"`` / ``"mot20"`` (``DO_PREPROC=True``, ``BENCHMARK`` MOT17 / MOT20): a predicted box matched
  (Hungarian, IoU >= 0.5) to a gt box of a distractor class is removed, then only considered pedestrians
  (label 0) are kept (see :mod:`detforge.data.mot`).

The metric computations are Roboflow ``trackers.eval`` (Apache-2.0), a port of TrackEval's that matches it
to 2.2e-16 on our tests and runs HOTA 3x faster (vectorised over the IoU thresholds; a 500-frame sequence
with 20 objects: HOTA 0.045 s against TrackEval's 0.136 s, all three families with the data preparation
0.1 s, on a busy 2-core CPU). Two degenerate cases follow TrackEval rather
than ``trackers``: a sequence without predictions or without gt boxes has ``MLR = 1`` (TrackEval's quirk;
the combined MLR is recomputed from the counts). Combining sequences sums the counts and averages AssA,
AssRe, AssPr and LocA weighted by true positives per IoU threshold, as TrackEval does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from detforge.data.mot import DISTRACTOR_LABELS, MOTSequence, Protocol

__all__ = ["MOTMetrics", "MOTResult", "evaluate_sequence", "evaluate_sequences", "sequence_data"]

Frames = Mapping[int, Mapping[str, Tensor]]
_EPS = np.finfo("float").eps
#: Columns of :meth:`MOTMetrics.table`; scores are shown in percent, as TrackEval prints them.
TABLE_COLUMNS = (
    "HOTA",
    "DetA",
    "AssA",
    "LocA",
    "MOTA",
    "MOTP",
    "IDF1",
    "IDP",
    "IDR",
    "IDSW",
    "Frag",
    "MT",
    "ML",
)
_PROTOCOLS = tuple(DISTRACTOR_LABELS)


def _array(entry: Mapping[str, Tensor] | None, key: str, dtype, shape: tuple[int, ...]) -> np.ndarray:
    value = entry.get(key) if entry is not None else None
    if value is None:
        return np.zeros(shape, dtype=dtype)
    return np.asarray(value.detach().cpu().numpy() if isinstance(value, Tensor) else value, dtype=dtype)


def _iou(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """IoU of xyxy boxes [N, 4] x [M, 4] -> [N, M], float64, exactly as TrackEval computes it."""
    from trackers.eval import box_iou

    return box_iou(boxes1, boxes2, box_format="xyxy")


def sequence_data(
    gt: Frames, pred: Frames, *, num_frames: int | None = None, protocol: Protocol = "all"
) -> dict[str, Any]:
    """TrackEval's data dict for one sequence: ``gt_ids``, ``tracker_ids`` (per frame, int arrays of ids
    remapped to ``0..K-1`` in sorted order of the original ids), ``similarity_scores`` (per frame, IoU
    [N_gt, N_pred]), ``num_gt_dets``, ``num_tracker_dets``, ``num_gt_ids``, ``num_tracker_ids``,
    ``num_timesteps``, plus ``gt_id_map`` / ``tracker_id_map`` (original id -> remapped).

    Args:
        gt, pred: frame number -> dict (see the module docstring).
        num_frames: frames 1..num_frames are scored (default: the last frame of ``gt`` or ``pred``).
        protocol: ``"all"``, ``"mot17"`` or ``"mot20"`` (see the module docstring).

    Raises:
        ValueError: an unknown protocol, a frame outside ``1..num_frames``, an id twice in one frame, or
            boxes and ids of different lengths.
    """
    if protocol not in _PROTOCOLS:
        raise ValueError(f"protocol must be one of {_PROTOCOLS}, got {protocol!r}")
    keys = [int(k) for k in (*gt.keys(), *pred.keys())]
    num_frames = max(keys, default=0) if num_frames is None else int(num_frames)
    if keys and (min(keys) < 1 or max(keys) > num_frames):
        raise ValueError(f"frame numbers must lie in 1..{num_frames}, got {min(keys)}..{max(keys)}")
    distractors = DISTRACTOR_LABELS[protocol]
    gt_ids, tracker_ids, similarity = [], [], []
    for t in range(1, num_frames + 1):
        g, p = gt.get(t), pred.get(t)
        g_boxes = _array(g, "boxes", np.float64, (0, 4)).reshape(-1, 4)  # [Ng, 4] xyxy
        n = len(g_boxes)
        g_ids = _array(g, "track_ids", np.int64, (0,)).reshape(-1)
        considered = (
            _array(g, "considered", bool, (n,)).reshape(-1) if g and "considered" in g else np.ones(n, bool)
        )
        labels = _array(g, "labels", np.int64, (n,)).reshape(-1)
        p_boxes = _array(p, "boxes", np.float64, (0, 4)).reshape(-1, 4)  # [Np, 4] xyxy
        p_ids = _array(p, "track_ids", np.int64, (0,)).reshape(-1)
        for what, ids, boxes in (("gt", g_ids, g_boxes), ("predicted", p_ids, p_boxes)):
            if len(ids) != len(boxes):
                raise ValueError(f"frame {t}: {len(boxes)} {what} boxes but {len(ids)} track_ids")
        if len(considered) != n or len(labels) != n:
            raise ValueError(f"frame {t}: considered / labels do not match the {n} gt boxes")
        confirmed = p_ids >= 0
        p_boxes, p_ids = p_boxes[confirmed], p_ids[confirmed]
        for what, ids in (("gt", g_ids), ("predicted", p_ids)):
            if len(np.unique(ids)) != len(ids):
                raise ValueError(f"frame {t}: a {what} track id appears more than once")
        if distractors and n and len(p_ids):
            # TrackEval: predictions matched to a distractor gt box are removed.
            scores = _iou(g_boxes, p_boxes)  # [Ng, Np]
            scores[scores < 0.5 - _EPS] = 0
            rows, cols = linear_sum_assignment(-scores)
            matched = scores[rows, cols] > _EPS
            rows, cols = rows[matched], cols[matched]
            keep = np.ones(len(p_ids), bool)
            keep[cols[np.isin(labels[rows], distractors)]] = False
            p_boxes, p_ids = p_boxes[keep], p_ids[keep]
        kept = considered & (labels == 0) if distractors else considered
        g_boxes, g_ids = g_boxes[kept], g_ids[kept]
        gt_ids.append(g_ids)
        tracker_ids.append(p_ids)
        similarity.append(_iou(g_boxes, p_boxes))
    unique_gt = np.unique(np.concatenate([np.zeros(0, np.int64), *gt_ids]))  # sorted, as TrackEval maps them
    unique_tr = np.unique(np.concatenate([np.zeros(0, np.int64), *tracker_ids]))
    return {
        "gt_ids": [np.searchsorted(unique_gt, ids).astype(int) for ids in gt_ids],
        "tracker_ids": [np.searchsorted(unique_tr, ids).astype(int) for ids in tracker_ids],
        "similarity_scores": similarity,
        "num_gt_dets": sum(len(i) for i in gt_ids),
        "num_tracker_dets": sum(len(i) for i in tracker_ids),
        "num_gt_ids": len(unique_gt),
        "num_tracker_ids": len(unique_tr),
        "num_timesteps": num_frames,
        "gt_id_map": {int(i): k for k, i in enumerate(unique_gt)},
        "tracker_id_map": {int(i): k for k, i in enumerate(unique_tr)},
    }


@dataclass(frozen=True)
class MOTMetrics:
    """The metrics of one sequence (or of several combined). Scores are fractions in [0, 1] (MOTA can be
    negative); HOTA's are means over the 19 IoU thresholds 0.05..0.95; CLEAR and Identity match at
    ``iou_threshold`` (0.5)."""

    name: str
    HOTA: float
    DetA: float
    AssA: float
    DetRe: float
    DetPr: float
    AssRe: float
    AssPr: float
    LocA: float
    OWTA: float
    MOTA: float
    MOTP: float
    MODA: float
    sMOTA: float
    CLR_Re: float
    CLR_Pr: float
    MTR: float
    PTR: float
    MLR: float
    IDF1: float
    IDR: float
    IDP: float
    CLR_TP: int
    CLR_FN: int
    CLR_FP: int
    IDSW: int
    Frag: int
    MT: int
    PT: int
    ML: int
    IDTP: int
    IDFN: int
    IDFP: int
    num_frames: int
    raw: dict[str, dict[str, Any]] = field(repr=False, compare=False)
    """``{"HOTA": ..., "CLEAR": ..., "Identity": ...}``: the ``trackers.eval`` dicts, per-threshold arrays
    (``HOTA_TP_array``, ``AssA_array``, ...) included; what combining needs."""

    @classmethod
    def _from_raw(cls, name: str, raw: dict[str, dict[str, Any]], num_frames: int) -> MOTMetrics:
        merged = {**raw["HOTA"], **raw["CLEAR"], **raw["Identity"]}
        values = {}
        for f in fields(cls):
            if f.name in merged:
                values[f.name] = int(merged[f.name]) if f.type == "int" else float(merged[f.name])
        return cls(name=name, num_frames=int(num_frames), raw=raw, **values)

    def as_dict(self) -> dict[str, float | int]:
        """Every metric by name (TrackEval's names), without ``name`` and the raw dicts."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("name", "raw")}

    def row(self) -> list[str]:
        """:data:`TABLE_COLUMNS` formatted: scores in percent with 2 decimals, counts as integers."""
        return [
            f"{100 * v:.2f}" if isinstance(v, float) else str(v)
            for v in (getattr(self, c) for c in TABLE_COLUMNS)
        ]

    def table(self) -> str:
        return _table([self])


def _table(rows: Sequence[MOTMetrics]) -> str:
    header = ["sequence", *TABLE_COLUMNS]
    cells = [header, *([m.name, *m.row()] for m in rows)]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
        for r in cells
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


@dataclass(frozen=True)
class MOTResult:
    """Per-sequence metrics and their combination (``combined``, TrackEval's ``COMBINED_SEQ``)."""

    sequences: list[MOTMetrics]
    combined: MOTMetrics

    @classmethod
    def of(cls, sequences: Iterable[MOTMetrics], name: str = "COMBINED") -> MOTResult:
        """Combine ``sequences`` as TrackEval does."""
        from trackers.eval import aggregate_clear_metrics, aggregate_hota_metrics, aggregate_identity_metrics

        items = list(sequences)
        raw = {
            "HOTA": aggregate_hota_metrics([m.raw["HOTA"] for m in items]),
            "CLEAR": aggregate_clear_metrics([m.raw["CLEAR"] for m in items]),
            "Identity": aggregate_identity_metrics([m.raw["Identity"] for m in items]),
        }
        return cls(items, MOTMetrics._from_raw(name, raw, sum(m.num_frames for m in items)))

    def table(self) -> str:
        """One row per sequence and a last row with the combined metrics."""
        return _table([*self.sequences, self.combined])

    def as_dict(self) -> dict[str, Any]:
        return {
            "sequences": {m.name: m.as_dict() for m in self.sequences},
            "combined": self.combined.as_dict(),
        }


def evaluate_sequence(
    gt: Frames,
    pred: Frames,
    *,
    name: str = "sequence",
    num_frames: int | None = None,
    protocol: Protocol = "all",
    iou_threshold: float = 0.5,
) -> MOTMetrics:
    """HOTA, CLEAR and Identity metrics of predicted tracks ``pred`` against ``gt`` for one sequence.

    Args:
        gt, pred: frame number (1-based) -> dict (see the module docstring).
        name: the sequence's name in tables.
        num_frames: the sequence's length (frames missing from both dicts are empty); default: the last frame
            in ``gt`` or ``pred``.
        protocol: which gt boxes are scored (``"all"``, ``"mot17"``, ``"mot20"``; see the module docstring).
        iou_threshold: least IoU of a CLEAR / Identity match (TrackEval's ``THRESHOLD``).
    """
    from trackers.eval import compute_clear_metrics, compute_hota_metrics, compute_identity_metrics

    data = sequence_data(gt, pred, num_frames=num_frames, protocol=protocol)
    args = (data["gt_ids"], data["tracker_ids"], data["similarity_scores"])
    clear = compute_clear_metrics(*args, threshold=iou_threshold)
    if data["num_tracker_dets"] == 0 or data["num_gt_dets"] == 0:
        clear["MLR"] = 1.0  # TrackEval's value for an empty sequence (trackers reports 0 when there is no gt)
    raw = {
        "HOTA": compute_hota_metrics(*args),
        "CLEAR": clear,
        "Identity": compute_identity_metrics(*args, threshold=iou_threshold),
    }
    return MOTMetrics._from_raw(name, raw, data["num_timesteps"])


def evaluate_sequences(
    runs: Iterable[tuple[MOTSequence, Frames]], *, iou_threshold: float = 0.5
) -> MOTResult:
    """Evaluate ``(sequence, predictions)`` pairs (each with its own gt, length and protocol) and combine.

    Raises:
        ValueError: a sequence without ground truth.
    """
    results = []
    for sequence, pred in runs:
        if sequence.gt is None:
            raise ValueError(f"sequence {sequence.name!r} has no ground truth to evaluate against")
        results.append(
            evaluate_sequence(
                sequence.gt,
                pred,
                name=sequence.name,
                num_frames=sequence.num_frames,
                protocol=sequence.protocol,
                iou_threshold=iou_threshold,
            )
        )
    return MOTResult.of(results)
