"""Writing detections as a COCO results JSON in the data set's original category ids."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from detforge.boxes import convert_boxes

__all__ = ["coco_results", "write_coco_results"]


def coco_results(
    predictions: Sequence[Mapping[str, Tensor]],
    image_ids: Sequence[int],
    label_to_cat_id: Mapping[int, int] | Sequence[int] | None = None,
) -> list[dict[str, Any]]:
    """Per-image predictions -> COCO result records.

    Args:
        predictions: per image ``boxes`` (Tensor[K, 4] xyxy pixels of the original image), ``scores``
            (Tensor[K]), ``labels`` (Tensor[K] int64, 0-indexed).
        image_ids: the data set's image id of each prediction.
        label_to_cat_id: label -> original category id (dict, or list indexed by label); None keeps labels.

    Returns:
        list of ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``.
    """
    if len(predictions) != len(image_ids):
        raise ValueError(f"got {len(predictions)} predictions for {len(image_ids)} image ids")
    records: list[dict[str, Any]] = []
    for img_id, pred in zip(image_ids, predictions):
        boxes = torch.as_tensor(pred["boxes"]).detach().double().cpu().reshape(-1, 4)  # [K, 4] xyxy
        xywh = convert_boxes(boxes, "xyxy", "xywh").tolist()  # [K, 4] xywh
        scores = torch.as_tensor(pred["scores"]).detach().cpu().reshape(-1).tolist()
        labels = torch.as_tensor(pred["labels"]).detach().cpu().reshape(-1).tolist()
        if not len(xywh) == len(scores) == len(labels):
            raise ValueError(
                f"prediction for image {img_id}: {len(xywh)} boxes, {len(scores)} scores, {len(labels)} labels"
            )
        for box, score, label in zip(xywh, scores, labels):
            if label_to_cat_id is None:
                cat = int(label)
            else:
                try:
                    cat = int(label_to_cat_id[int(label)])
                except (KeyError, IndexError):
                    raise ValueError(
                        f"prediction for image {img_id}: label {label} has no category id in label_to_cat_id"
                    ) from None
            records.append({"image_id": int(img_id), "category_id": cat, "bbox": box, "score": float(score)})
    return records


def write_coco_results(
    predictions: Sequence[Mapping[str, Tensor]],
    image_ids: Sequence[int],
    label_to_cat_id: Mapping[int, int] | Sequence[int] | None,
    path: str | Path,
) -> Path:
    """Write ``coco_results(...)`` to ``path`` (atomically) and return the path."""
    path = Path(path)
    records = coco_results(predictions, image_ids, label_to_cat_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(records, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
