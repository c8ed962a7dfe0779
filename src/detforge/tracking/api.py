"""``detforge.tracking.track(model, source)``: tracking from Python, frame by frame, as ``detforge track`` does.

::

    from detforge.models import create_model
    from detforge.tracking import track

    model = create_model("fcos_resnet50_fpn", weights="coco")          # or an ObjectDetector checkpoint
    for number, frame, tracks in track(model, "street.mp4", conf=0.4):
        tracks["track_ids"], tracks["boxes"]                            # [M] int64, [M, 4] xyxy pixels
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

__all__ = ["track"]


def _pipeline(model, imgsz: int | None):
    """Decoded images (uint8 Tensor[C, H, W] each) -> detections in their pixels, for an ``ObjectDetector``
    (its validation pre-processing at ``imgsz`` or its training size, as the CLI runs it) or a bare
    :class:`~detforge.models.base.Detector` (its own :meth:`~detforge.models.base.Detector.predict`)."""
    if hasattr(model, "hparams") and hasattr(model, "model"):  # an ObjectDetector
        from detforge.engine.validate import uses_own_preprocess
        from detforge.engines import TorchEngine
        from detforge.engines.pipeline import DetectionPipeline

        size = imgsz or model.hparams.get("imgsz") or max(getattr(model.model, "default_input_size", (640,)))
        model.eval()
        return DetectionPipeline(
            model, TorchEngine(model.model), int(size), own_preprocess=uses_own_preprocess(model)
        )
    if not hasattr(model, "predict"):
        from detforge.errors import InvalidValueError

        raise InvalidValueError(f"track: {type(model).__name__} is not a detforge detector (no .predict)")
    return lambda images: model.predict([image.float() / 255 for image in images])


@torch.no_grad()
def track(
    model,
    source: str,
    *,
    tracker: str = "bytetrack",
    conf: float | None = None,
    imgsz: int | None = None,
    batch: int = 1,
    **tracker_options,
) -> Iterator[tuple[int, np.ndarray, dict[str, Tensor]]]:
    """Track the objects ``model`` detects in ``source``, yielding ``(frame number, frame, tracks)`` per frame.

    Args:
        model: an ``ObjectDetector`` (a checkpoint, ``ObjectDetector.load_from_checkpoint``) or a registered
            model (``create_model(name, weights=...)``).
        source: a video file, a folder of frames (MOT layout too), a camera index (``"0"``) or a stream URL
            (:func:`~detforge.tracking.video.open_video_source`).
        tracker: a registered tracker (:func:`~detforge.tracking.list_trackers`).
        conf: the detector's score threshold: the tracker's high threshold, and 0.1 above it its new-track one
            (:func:`~detforge.tracking.tracker_thresholds`); default the model's F1-best confidence when it
            has one, else 0.25.
        imgsz: an ``ObjectDetector``'s input size (default its training size).
        batch: frames per forward pass (cameras and streams: 1).
        **tracker_options: the tracker's options; they win over those set from ``conf``.

    Yields:
        the frame number (1-based), the frame (RGB ``np.ndarray[H, W, 3]`` uint8) and the tracker's output
        (``boxes`` [M, 4] xyxy pixels, ``scores`` [M], ``labels`` [M], ``track_ids`` [M] int64).
    """
    from detforge.metrics.f1 import DEFAULT_CONF
    from detforge.tracking.registry import create_detector_tracker
    from detforge.tracking.run import _numbered, detect_and_track
    from detforge.tracking.video import open_video_source

    conf = float(conf if conf is not None else getattr(model, "best_conf", None) or DEFAULT_CONF)
    follower = create_detector_tracker(tracker, conf=conf, detector=model, **tracker_options)
    pipeline = _pipeline(model, imgsz)
    channels = getattr(getattr(model, "hparams", None), "get", lambda *_: None)("in_chans") or 3
    video = open_video_source(str(source))
    step = 1 if video.live else max(1, int(batch))
    yield from detect_and_track(
        _numbered(video), pipeline, conf=conf, tracker=follower, step=step, channels=channels
    )
