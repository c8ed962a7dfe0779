"""Multi-object tracking: the tracker protocol (:class:`Tracker`) and trackers by name.

``create_tracker("bytetrack")`` (the default: detforge's batched ByteTrack; also ``bytetrack-roboflow``, its
reference, ``ocsort``, ``botsort``, ``sort`` from Roboflow's ``trackers`` package, and ``memory``, the edge
detectors' GRU tracker) returns a :class:`Tracker` whose
``update(detections, image=None)`` takes one frame's ``dict(boxes, scores, labels)`` and returns the boxes
it reports with ``track_ids``; see :mod:`detforge.tracking.base`. ``track(model, source)`` runs a model and a
tracker over a video, frame by frame (:mod:`detforge.tracking.api`).

Also here: video sources and the annotated-video writer (:mod:`detforge.tracking.video`), the frame loop of
``detforge track`` (:mod:`detforge.tracking.run`), MOT metrics equal to TrackEval's
(:mod:`detforge.tracking.metrics`) and tracking evaluation on a video data set
(:mod:`detforge.tracking.evaluate`, ``detforge val --track``).

Kept light: importing this package imports no tracker implementation (they load on first use).
"""

from detforge.tracking.api import track
from detforge.tracking.base import Tracker
from detforge.tracking.registry import (
    create_tracker,
    list_trackers,
    register_tracker,
    tracker_options,
    tracker_thresholds,
)

__all__ = [
    "Tracker",
    "create_tracker",
    "list_trackers",
    "register_tracker",
    "track",
    "tracker_options",
    "tracker_thresholds",
]
