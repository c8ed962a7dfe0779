"""From decoded images to detections in their own pixels: the one path ``predict`` and ``track`` share.

:class:`DetectionPipeline` runs the model's validation pre-processing (resize / letterbox to the input size),
the engine (eager PyTorch or an exported file, :mod:`detforge.engines`), the model's post-processing and the
mapping back to each image's pixels. Named weights with their own pre-processing (torchvision's resize and
normalisation) run their ``predict`` on the images as they are.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from detforge.engines.base import Engine, engine_detections

__all__ = ["DetectionPipeline", "detection_records"]


class DetectionPipeline:
    """Detections of a batch of decoded images.

    Args:
        detector: the ``ObjectDetector`` (eval mode) whose model, hyper-parameters and post-processing run.
        engine: what runs the network (:func:`detforge.engines.open_engine`).
        imgsz: the network's input size (square).
        own_preprocess: run ``detector.model.predict`` on the images as they are (named weights with their
            own resize; :func:`detforge.engine.validate.uses_own_preprocess`).
    """

    def __init__(self, detector, engine: Engine, imgsz: int, *, own_preprocess: bool = False) -> None:
        from detforge.data.transforms import build_val_transforms

        self.detector = detector
        self.engine = engine
        self.imgsz = int(imgsz)
        self.own_preprocess = own_preprocess
        self.transform = build_val_transforms(self.imgsz)

    @torch.no_grad()
    def __call__(self, images: Sequence[Tensor]) -> list[dict[str, Tensor]]:
        """``images``: Tensor[C, H, W] uint8 each (sizes may differ) -> per image ``boxes`` (Tensor[K, 4] xyxy
        pixels of that image), ``scores`` (Tensor[K]), ``labels`` (Tensor[K] int64), on the model's device."""
        from detforge.targets import to_original_size

        device = self.detector.device
        if self.own_preprocess:
            return self.detector.model.predict([raw.to(device).float() / 255 for raw in images])
        batch, targets = [], []
        empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
        for raw in images:
            image, target = self.transform(raw, dict(empty))  # [C, S, S] float in [0, 1]
            target["orig_size"] = torch.tensor(raw.shape[-2:])
            batch.append(image)
            targets.append(target)
        stacked = torch.stack(batch).to(device)  # [B, C, S, S]
        sizes = [tuple(int(v) for v in t["size"]) for t in targets]
        preds = engine_detections(self.engine, self.detector.model, stacked, sizes)
        return to_original_size(preds, targets)


def detection_records(pred: dict[str, Tensor], class_names: list[str] | None) -> list[dict]:
    """``predictions.json``'s detections of one image or frame: ``box`` (xyxy pixels, 0.01 px), ``score``,
    ``label``, ``class_name`` and, for tracked detections (``track_ids`` in ``pred``), ``track_id``."""
    ids = pred.get("track_ids")
    records = []
    for i, (box, score, label) in enumerate(zip(pred["boxes"], pred["scores"], pred["labels"], strict=True)):
        record = {
            "box": [round(float(c), 2) for c in box],
            "score": round(float(score), 4),
            "label": int(label),
            "class_name": class_names[int(label)] if class_names else str(int(label)),
        }
        if ids is not None:
            record["track_id"] = int(ids[i])
        records.append(record)
    return records
