"""Flat NumPy containers for COCO-style ground truth and detections, and their readers.

COCO evaluation reads boxes as ``[x, y, w, h]`` float64 and computes ``x + w`` itself; to agree with
pycocotools to the last bit these containers keep that format. They are the edge where detforge's xyxy
tensors (``from_tensors``) and COCO JSON (``from_coco_dict`` / ``from_coco_results``) meet the evaluator.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from detforge.boxes import convert_boxes

__all__ = ["CocoDetections", "CocoGroundTruth"]


def _bad(source: str, record: str, problem: str) -> ValueError:
    return ValueError(f"{source}: {record}: {problem}")


def _xyxy_to_xywh64(boxes: Tensor | np.ndarray) -> np.ndarray:
    """xyxy boxes (Tensor or array [N, 4]) -> float64 ``[x, y, w, h]`` (array [N, 4])."""
    b = boxes.detach().cpu().double().numpy() if isinstance(boxes, Tensor) else np.asarray(boxes, np.float64)
    return convert_boxes(b.reshape(-1, 4), "xyxy", "xywh")


def _boxes_from_records(records: Sequence[Mapping[str, Any]], source: str, kind: str) -> np.ndarray:
    """The ``bbox`` fields of COCO records -> float64 array [N, 4]; names the first bad record."""
    try:
        boxes = np.asarray([r["bbox"] for r in records], dtype=np.float64).reshape(len(records), 4)
    except (KeyError, TypeError, ValueError):
        for i, r in enumerate(records):
            bb = r.get("bbox") if isinstance(r, Mapping) else None
            if not isinstance(bb, Sequence) or len(bb) != 4:
                raise _bad(source, f"{kind}[{i}]", f"'bbox' must be [x, y, w, h], got {bb!r}") from None
        raise
    bad = ~np.isfinite(boxes).all(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise _bad(source, f"{kind}[{i}] (id {records[i].get('id')})", f"non-finite bbox {boxes[i].tolist()}")
    return boxes


def _int_field(records: Sequence[Mapping[str, Any]], key: str, source: str, kind: str) -> np.ndarray:
    try:
        return np.asarray([r[key] for r in records], dtype=np.int64).reshape(len(records))
    except (KeyError, TypeError, ValueError):
        for i, r in enumerate(records):
            if not isinstance(r, Mapping) or key not in r or isinstance(r[key], (list, dict, str)):
                got = r.get(key) if isinstance(r, Mapping) else r
                raise _bad(source, f"{kind}[{i}]", f"needs an integer {key!r}, got {got!r}") from None
        raise


@dataclass(frozen=True)
class CocoGroundTruth:
    """Ground-truth annotations of a data set, one row per annotation, in file order.

    Attributes:
        image_ids (int64 [G]): image id of each annotation.
        category_ids (int64 [G]): category id of each annotation (the data set's own ids).
        boxes (float64 [G, 4]): ``[x, y, w, h]`` pixels.
        areas (float64 [G]): object area used for the small/medium/large ranges (COCO's ``area`` field).
        iscrowd (bool [G]): crowd regions: matched by any number of detections, never counted.
        ignore (bool [G]): extra "do not count" flags (detforge targets' ``ignore``). COCO JSON has none:
            pycocotools overwrites ``ignore`` with ``iscrowd``, and so does ``from_coco_dict``.
        ann_ids (int64 [G]): annotation ids (a match to id 0 counts as no match, as in pycocotools).
        all_image_ids (int64 [I]): every image of the data set, including images without annotations.
        all_category_ids (int64 [K]): every category of the data set, including ones without annotations.
        category_names (dict[int, str]): category id -> name, where known.
    """

    image_ids: np.ndarray
    category_ids: np.ndarray
    boxes: np.ndarray
    areas: np.ndarray
    iscrowd: np.ndarray
    ignore: np.ndarray
    ann_ids: np.ndarray
    all_image_ids: np.ndarray
    all_category_ids: np.ndarray
    category_names: dict[int, str]

    def __len__(self) -> int:
        return len(self.image_ids)

    @classmethod
    def from_coco_dict(cls, dataset: Mapping[str, Any], source: str = "ground truth") -> CocoGroundTruth:
        """Read a COCO instances dict (``images``, ``annotations``, ``categories``).

        Annotations of images or categories not listed in ``images`` / ``categories`` are left out of the
        evaluation, as pycocotools does.
        """
        for key in ("images", "annotations", "categories"):
            if not isinstance(dataset.get(key), list):
                raise _bad(source, f"key {key!r}", "missing or not a list (is this a COCO instances file?)")
        anns = dataset["annotations"]
        boxes = _boxes_from_records(anns, source, "annotations")
        areas = np.asarray([a.get("area", np.nan) for a in anns], dtype=np.float64).reshape(len(anns))
        if np.isnan(areas).any():
            i = int(np.flatnonzero(np.isnan(areas))[0])
            raise _bad(source, f"annotations[{i}] (id {anns[i].get('id')})", "missing or NaN 'area'")
        iscrowd = np.asarray([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool).reshape(len(anns))
        names = {}
        for i, c in enumerate(dataset["categories"]):
            if not isinstance(c, Mapping) or "id" not in c:
                raise _bad(source, f"categories[{i}]", f"needs an 'id', got {c!r}")
            names[int(c["id"])] = str(c.get("name", c["id"]))
        return cls(
            image_ids=_int_field(anns, "image_id", source, "annotations"),
            category_ids=_int_field(anns, "category_id", source, "annotations"),
            boxes=boxes,
            areas=areas,
            iscrowd=iscrowd,
            ignore=iscrowd.copy(),
            ann_ids=_int_field(anns, "id", source, "annotations"),
            all_image_ids=np.unique(_int_field(dataset["images"], "id", source, "images")),
            all_category_ids=np.unique(np.asarray(list(names), dtype=np.int64)),
            category_names=names,
        )

    @classmethod
    def from_tensors(
        cls,
        targets: Sequence[Mapping[str, Tensor]],
        image_ids: Sequence[int] | None = None,
        category_ids: Sequence[int] | None = None,
    ) -> CocoGroundTruth:
        """Per-image target dicts (``boxes`` xyxy [N, 4], ``labels`` [N], optional ``iscrowd``, ``ignore``,
        ``area`` [N]) -> ground truth. Area defaults to the box area. Images are numbered by position unless
        ``image_ids`` is given; categories are the labels seen unless ``category_ids`` is given."""
        ids = list(range(len(targets))) if image_ids is None else [int(i) for i in image_ids]
        if len(ids) != len(targets):
            raise ValueError(f"got {len(ids)} image ids for {len(targets)} targets")
        parts: dict[str, list[np.ndarray]] = {k: [] for k in ("img", "cat", "box", "area", "crowd", "ign")}
        for img_id, t in zip(ids, targets):
            boxes = _xyxy_to_xywh64(t["boxes"])
            n = len(boxes)
            labels = torch.as_tensor(t["labels"]).reshape(-1).cpu().numpy().astype(np.int64)
            if len(labels) != n:
                raise ValueError(f"target of image {img_id}: {n} boxes but {len(labels)} labels")
            area = t.get("area")
            area = boxes[:, 2] * boxes[:, 3] if area is None else torch.as_tensor(area).double().cpu().numpy()
            crowd = t.get("iscrowd")
            crowd = np.zeros(n, bool) if crowd is None else torch.as_tensor(crowd).cpu().numpy().astype(bool)
            ign = t.get("ignore")
            ign = np.zeros(n, bool) if ign is None else torch.as_tensor(ign).cpu().numpy().astype(bool)
            for key, value in zip(parts, (np.full(n, img_id), labels, boxes, area, crowd, ign)):
                parts[key].append(
                    np.asarray(value).reshape(n, 4) if key == "box" else np.asarray(value).reshape(n)
                )
        cat = lambda k, shape, dt: np.concatenate(parts[k]).astype(dt) if parts[k] else np.zeros(shape, dt)  # noqa: E731
        labels = cat("cat", 0, np.int64)
        crowd = cat("crowd", 0, bool)
        cats = np.unique(labels) if category_ids is None else np.unique(np.asarray(category_ids, np.int64))
        return cls(
            image_ids=cat("img", 0, np.int64),
            category_ids=labels,
            boxes=cat("box", (0, 4), np.float64).reshape(-1, 4),
            areas=cat("area", 0, np.float64),
            iscrowd=crowd,
            ignore=cat("ign", 0, bool) | crowd,
            ann_ids=np.arange(1, len(labels) + 1, dtype=np.int64),
            all_image_ids=np.unique(np.asarray(ids, np.int64)),
            all_category_ids=cats,
            category_names={},
        )


@dataclass(frozen=True)
class CocoDetections:
    """Detections, one row per box, in file order (the order breaks score ties, as in pycocotools).

    Attributes:
        image_ids (int64 [D]), category_ids (int64 [D]), scores (float64 [D]),
        boxes (float64 [D, 4]): ``[x, y, w, h]`` pixels; the detection's area is ``w * h``.
    """

    image_ids: np.ndarray
    category_ids: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.image_ids)

    @classmethod
    def from_coco_results(
        cls, results: Sequence[Mapping[str, Any]], source: str = "results"
    ) -> CocoDetections:
        """Read a COCO results list (``image_id``, ``category_id``, ``bbox`` xywh, ``score``)."""
        if not isinstance(results, list):
            raise _bad(
                source,
                "top level",
                f"a COCO results file is a list of detections, got {type(results).__name__}",
            )
        try:
            scores = np.asarray([r["score"] for r in results], dtype=np.float64).reshape(len(results))
        except (KeyError, TypeError, ValueError):
            i = next(i for i, r in enumerate(results) if not isinstance(r, Mapping) or "score" not in r)
            raise _bad(source, f"detection [{i}]", "needs a numeric 'score'") from None
        if not np.isfinite(scores).all():
            i = int(np.flatnonzero(~np.isfinite(scores))[0])
            raise _bad(source, f"detection [{i}]", f"non-finite score {scores[i]}")
        return cls(
            image_ids=_int_field(results, "image_id", source, "detection "),
            category_ids=_int_field(results, "category_id", source, "detection "),
            boxes=_boxes_from_records(results, source, "detection "),
            scores=scores,
        )

    @classmethod
    def from_tensors(
        cls, predictions: Sequence[Mapping[str, Tensor]], image_ids: Sequence[int] | None = None
    ) -> CocoDetections:
        """Per-image prediction dicts (``boxes`` xyxy [K, 4], ``scores`` [K], ``labels`` [K]) -> detections."""
        ids = list(range(len(predictions))) if image_ids is None else [int(i) for i in image_ids]
        if len(ids) != len(predictions):
            raise ValueError(f"got {len(ids)} image ids for {len(predictions)} predictions")
        img, cat, box, score = [], [], [], []
        for img_id, p in zip(ids, predictions):
            b = _xyxy_to_xywh64(p["boxes"])
            s = torch.as_tensor(p["scores"]).reshape(-1).detach().double().cpu().numpy()
            lab = torch.as_tensor(p["labels"]).reshape(-1).cpu().numpy().astype(np.int64)
            if not len(b) == len(s) == len(lab):
                raise ValueError(
                    f"prediction of image {img_id}: {len(b)} boxes, {len(s)} scores, {len(lab)} labels"
                )
            img.append(np.full(len(b), img_id, np.int64))
            cat.append(lab)
            box.append(b)
            score.append(s)
        if not img:
            return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 4)), np.zeros(0))
        return cls(np.concatenate(img), np.concatenate(cat), np.concatenate(box), np.concatenate(score))
