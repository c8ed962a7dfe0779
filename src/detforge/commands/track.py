"""``detforge track --ckpt C SOURCE... --out DIR``: follow objects through videos, frame folders and streams.

A source is a video file (``clip.mp4``), a folder of frames (a MOT-layout sequence with ``seqinfo.ini`` /
``img1/``, or a folder holding several such sequences: each is tracked on its own), a camera index (``0``)
or a stream URL (``rtsp://...``). Every frame is detected (``--batch`` frames per forward pass for files and
folders, one at a time for cameras and streams) and its detections go to the tracker (``--tracker bytetrack``;
``detforge.tracking.list_trackers()`` lists them, ``--tracker-option NAME=VALUE`` sets one of its options).

Written to ``DIR``: ``<name>.mp4`` (boxes coloured and labelled by track id; ``--no-draw`` skips it),
``<name>.txt`` (MOT-challenge results: ``frame,id,x,y,w,h,score,-1,-1,-1``) and ``predictions.json`` (one
record per frame with ``track_id`` on each detection). A source that cannot be opened, a video that stops
early (named with its last good frame) or unreadable frames: one line each, the rest is written, exit 1.

The score threshold (``--conf``, else the checkpoint's F1-best validation confidence) is the tracker's
threshold for starting and confidently extending tracks; detections down to the tracker's low threshold
(ByteTrack's second association) reach it too.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from detforge.commands.inference import add_model_arguments, prepare_inference
from detforge.commands.video_runs import run_videos

HELP = "follow objects through videos, frame folders or streams: track ids, annotated video, MOT txt"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="detforge track", description=__doc__.splitlines()[0])
    parser.add_argument(
        "sources", nargs="+", help="video files, frame folders (MOT layout), camera index, URL"
    )
    add_model_arguments(parser)
    parser.add_argument("--tracker", default="bytetrack", help="a registered tracker (default bytetrack)")
    parser.add_argument(
        "--tracker-option",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an option of the tracker, e.g. lost_track_buffer=60 (repeatable)",
    )
    parser.add_argument("--out", default="runs/track", help="output folder (default runs/track)")
    parser.add_argument("--no-draw", action="store_true", help="write the MOT txt and JSON, no video")
    parser.add_argument(
        "--fps", type=float, default=None, help="frame rate of frame folders without seqinfo.ini (default 30)"
    )
    return parser


def parse_options(items: list[str]) -> dict:
    """``["lost_track_buffer=60", "frame_rate=25.0"]`` -> their values as YAML reads them (numbers, booleans,
    strings); :class:`~detforge.errors.InvalidValueError` for an item without ``=``."""
    import yaml

    from detforge.errors import InvalidValueError

    options = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise InvalidValueError(f"--tracker-option {item!r}: give NAME=VALUE, e.g. lost_track_buffer=60")
        options[name.strip()] = yaml.safe_load(value)
    return options


def expand_sources(sources: list[str]) -> list[str]:
    """A folder holding MOT sequences (sub-folders with ``seqinfo.ini``) becomes those sequences, sorted."""
    out = []
    for source in sources:
        path = Path(source)
        children = sorted(p for p in path.iterdir() if (p / "seqinfo.ini").is_file()) if path.is_dir() else []
        is_sequence = path.is_dir() and ((path / "seqinfo.ini").is_file() or (path / "img1").is_dir())
        out += [str(p) for p in children] if children and not is_sequence else [source]
    return out


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from detforge.engine.callbacks import atomic_write
    from detforge.tracking import create_tracker

    options = parse_options(args.tracker_option)
    create_tracker(args.tracker, **options)  # an unknown tracker or option: one line before the model loads
    sources = expand_sources(args.sources)
    started = prepare_inference(args, parser, batch=args.batch)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records: list[dict] = []
    problems = run_videos(
        sources, started, args, out, records, set(), tracker_name=args.tracker, tracker_options=options
    )
    text = json.dumps(records, indent=1)
    atomic_write(out / "predictions.json", lambda tmp: Path(tmp).write_text(text))
    frames = len(records)
    tracks = len({(r["file"], d["track_id"]) for r in records for d in r["detections"]})
    print(f"{len(sources)} sources, {frames} frames, {tracks} tracks ({args.tracker}) -> {out}")
    if problems:
        print(f"detforge track: {problems} of {len(sources)} sources had problems (above)", file=sys.stderr)
    return 1 if problems else 0
