"""Video sources for ``detforge predict`` and ``detforge track``: each source run through the started model
(and a tracker), its outputs named, its problems reported in one line each, a summary line per source."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["run_videos", "unique_name"]


def unique_name(stem: str, used: set[str]) -> str:
    """``stem``, or ``stem_2``, ``stem_3``, ... when an earlier output took it (same name in two folders)."""
    name, n = stem, 2
    while name in used:
        name, n = f"{stem}_{n}", n + 1
    used.add(name)
    return name


def run_videos(
    sources: list[str],
    started,
    args: argparse.Namespace,
    out: Path,
    records: list[dict],
    used_names: set[str],
    *,
    tracker_name: str | None,
    tracker_options: dict | None = None,
    open_source=None,
) -> int:
    """Run every source in ``sources`` (video files, frame folders, camera indices, stream URLs) and return how
    many had a problem (could not be opened, stopped early, skipped frames), each named on stderr.

    Args:
        started: the :class:`~detforge.commands.inference.Inference` of the command.
        args: the command's options (``batch``, ``no_draw``, ``fps``).
        tracker_name: a registered tracker (``detforge track``), or None to only detect (``predict``).
        tracker_options: keyword options of :func:`detforge.tracking.create_tracker`.
    """
    from detforge.errors import DataError, MissingFileError
    from detforge.tracking.run import run_sequence
    from detforge.tracking.video import open_video_source

    opener = open_source or (lambda s: open_video_source(s, default_fps=getattr(args, "fps", None) or 30.0))
    tracker = None
    if tracker_name is not None:  # the detector's threshold is the tracker's, unless an option says otherwise
        from detforge.tracking.registry import create_detector_tracker

        tracker = create_detector_tracker(
            tracker_name, conf=started.conf, detector=started.detector, **(tracker_options or {})
        )
    command = "track" if tracker is not None else "predict"
    problems = 0
    for spec in sources:
        try:
            source = opener(spec)
        except (DataError, MissingFileError) as err:
            print(f"detforge {command}: skipped {err}", file=sys.stderr)
            problems += 1
            continue
        source.name = unique_name(source.name, used_names)
        try:
            report = run_sequence(
                source,
                started.pipeline,
                conf=started.conf,
                tracker=tracker,
                out=out,
                batch=args.batch,
                channels=started.detector.hparams.in_chans,
                class_names=started.class_names,
                draw=not args.no_draw,
                records=records,
            )
        except DataError as err:  # opened, then failed before its first frame
            print(f"detforge {command}: skipped {err}", file=sys.stderr)
            problems += 1
            continue
        for line in report.warnings:
            print(f"detforge {command}: {line}", file=sys.stderr)
        problems += bool(report.warnings)
        tracks = f", {len(report.track_ids)} tracks" if tracker is not None else ""
        spent = ", ".join(f"{k} {v / max(report.frames, 1) * 1000:.1f}" for k, v in report.seconds.items())
        print(
            f"{spec}: {report.frames} frames, {report.detections} detections{tracks}, {report.fps:.1f} frames/s "
            f"(ms per frame: {spent}) -> {', '.join(str(p) for p in report.outputs) or 'predictions.json'}",
            file=sys.stderr,
        )
    return problems
