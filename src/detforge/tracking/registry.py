"""Trackers by name: ``create_tracker("bytetrack", lost_track_buffer=60)`` and ``detforge track --tracker NAME``
look them up here.

A builder is a callable (a function or a :class:`~detforge.tracking.base.Tracker` subclass) taking typed
keyword options and returning a :class:`~detforge.tracking.base.Tracker`, registered under its name with
:func:`register_tracker`::

    @register_tracker("bytetrack")
    def bytetrack(*, lost_track_buffer: int = 30, ...) -> Tracker: ...

The built-in trackers register themselves when their module is imported: ``bytetrack`` (the default,
detforge's batched ByteTrack) in :mod:`detforge.tracking.bytetrack`; ``bytetrack-roboflow`` (its reference),
``ocsort``, ``botsort`` and ``sort`` wrapping Roboflow's ``trackers`` in :mod:`detforge.tracking.roboflow`;
``memory``, the edge detectors' GRU tracker, in :mod:`detforge.tracking.memory`. :func:`list_trackers` and
:func:`create_tracker` import them first.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from detforge.errors import InvalidValueError

__all__ = [
    "CONF_OPTIONS",
    "DEFAULT_TRACKER",
    "create_detector_tracker",
    "create_tracker",
    "list_trackers",
    "model_options",
    "register_tracker",
    "tracker_options",
    "tracker_thresholds",
]

DEFAULT_TRACKER = "bytetrack"

_TRACKERS: dict[str, Callable[..., Any]] = {}

BUILTIN_MODULES = ("detforge.tracking.bytetrack", "detforge.tracking.roboflow", "detforge.tracking.memory")
"""The modules whose import registers the built-in trackers (``bytetrack`` first: the default)."""


def register_tracker(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering a tracker builder under ``name``; a name taken by another builder raises a
    ValueError (registering the same function again, as a module reload does, is allowed)."""

    def register(builder: Callable[..., Any]) -> Callable[..., Any]:
        taken = _TRACKERS.get(name)
        if taken is not None and _qualified(taken) != _qualified(builder):
            raise ValueError(f"tracker {name!r} is already registered ({_qualified(taken)})")
        _TRACKERS[name] = builder
        return builder

    return register


def _qualified(function: Any) -> str:
    return f"{getattr(function, '__module__', '')}.{getattr(function, '__qualname__', repr(function))}"


def _load_builtins() -> None:
    import importlib

    for module in BUILTIN_MODULES:
        importlib.import_module(module)


def list_trackers() -> list[str]:
    """The registered tracker names, in registration order (the default, ``bytetrack``, first)."""
    _load_builtins()
    return list(_TRACKERS)


def tracker_options(name: str) -> dict[str, inspect.Parameter]:
    """The keyword options of tracker ``name`` (its builder's signature), by option name."""
    builder = _builder(name)
    return {
        p.name: p
        for p in inspect.signature(builder).parameters.values()
        if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    }


CONF_OPTIONS = ("high_conf_det_threshold", "track_activation_threshold")
"""The options set from the detector's score threshold in ``detforge track`` and ``val --track``: the score a
detection needs for the first association, and to start a track (ByteTrack's high and new-track thresholds)."""

NEW_TRACK_MARGIN = 0.1
"""A new track needs the first association's threshold plus this: the ByteTrack paper's rule (its code's
``det_thresh = track_thresh + 0.1``; the ``trackers`` package's defaults 0.6 / 0.7 keep it)."""


def tracker_thresholds(name: str, conf: float) -> dict[str, float]:
    """Options of tracker ``name`` set from the detector's score threshold ``conf`` (the checkpoint's F1-best
    confidence, or ``--conf``): ``high_conf_det_threshold`` = ``conf`` and ``track_activation_threshold`` =
    ``conf`` + :data:`NEW_TRACK_MARGIN` (at most 1), for those of them it takes. The ``trackers`` package's
    defaults (0.6 / 0.7) suit a detector whose scores are calibrated like YOLOX's on MOT17; a detector trained
    here has its own best point, measured on its validation data. Options the user sets win over these."""
    accepted = tracker_options(name)
    values = {
        "high_conf_det_threshold": float(conf),
        "track_activation_threshold": min(float(conf) + NEW_TRACK_MARGIN, 1.0),
    }
    return {option: value for option, value in values.items() if option in accepted}


def model_options(name: str, model) -> dict[str, object]:
    """Options of tracker ``name`` that come from the detector itself: its learned object memory
    (``model.memory``, the edge detectors' GRU) for a tracker taking ``memory``; ``model`` is the network
    (a :class:`~detforge.models.base.Detector`) or an ``ObjectDetector`` holding it."""
    from torch import nn

    network = getattr(model, "model", model)
    memory = getattr(network, "memory", None)
    if "memory" in tracker_options(name) and isinstance(memory, nn.Module):
        return {"memory": memory}
    return {}


def create_detector_tracker(name: str, *, conf: float, detector=None, **options: Any):
    """:func:`create_tracker` for a detector's detections, as ``detforge track``, ``val --track`` and
    :func:`detforge.tracking.track` build it: :func:`tracker_thresholds` from ``conf`` and
    :func:`model_options` from ``detector`` (when given), under the ``options`` the user sets."""
    from_model = model_options(name, detector) if detector is not None else {}
    return create_tracker(name, **{**tracker_thresholds(name, conf), **from_model, **options})


def _builder(name: str) -> Callable[..., Any]:
    names = list_trackers()
    if name not in _TRACKERS:
        raise InvalidValueError(f"unknown tracker {name!r}; known trackers: {', '.join(names)}")
    return _TRACKERS[name]


def create_tracker(name: str = DEFAULT_TRACKER, **options: Any):
    """A new :class:`~detforge.tracking.base.Tracker` registered as ``name`` (default ``bytetrack``).

    Args:
        name: a registered name (:func:`list_trackers`).
        **options: the tracker's keyword options (:func:`tracker_options`); an option the tracker does not
            take is an :class:`~detforge.errors.InvalidValueError` naming it and the accepted ones.
    """
    builder = _builder(name)
    accepted = tracker_options(name)
    unknown = [k for k in options if k not in accepted]
    if unknown:
        raise InvalidValueError(
            f"tracker {name!r} has no option {', '.join(map(repr, unknown))}; "
            f"its options: {', '.join(accepted) or 'none'}"
        )
    return builder(**options)
