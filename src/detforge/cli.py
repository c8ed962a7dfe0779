"""``detforge`` command line: a thin dispatcher; each sub-command lives in ``detforge.commands.<name>``.

Every command module exposes ``main(argv: list[str]) -> int`` and a one-line ``HELP``. Imports are lazy so
``detforge --help`` stays fast.

User errors (a missing or corrupt file, an unknown name, a bad option value, bad data: ``detforge.errors``)
from any command are printed as one line ``detforge CMD: MESSAGE`` on stderr, without a traceback, and the
exit status is 2 (1 for ``WeightsUnavailableError``: offline without the weights file). ``--verbose``
anywhere on the command line (taken out before the command sees its options) or ``DETFORGE_DEBUG=1`` shows
the full traceback instead. argparse's own usage errors exit 2 too; ``detforge doctor`` exits 1 when it
finds problems in the data (a report, not an error). Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib
import os
import sys

from detforge.errors import exit_status, find_user_error, user_message

COMMANDS = {
    "train": "train a detector (default: small model on the built-in synthetic data set)",
    "val": "evaluate a checkpoint on a data set, or a COCO results JSON against its ground truth",
    "predict": "run a checkpoint on images, folders, globs or videos; draw boxes and write JSON",
    "track": "follow objects through videos, frame folders or streams: track ids, annotated video, MOT txt",
    "export": "export a checkpoint to ONNX (optionally with NMS in the graph) or INT8",
    "bench": "time a model's forward and postprocess on this machine",
    "doctor": "check a data set for every known problem and print a report",
    "models": "list the registered models with their parameter counts",
    "data": "data set utilities: `detforge data synth --out DIR --format coco|voc|yolo`",
    "anchors": "YOLO anchors for a data set: k-means (1 - IoU) on its training boxes at the input size",
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: detforge <command> [options]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {text}" for name, text in COMMANDS.items()]
    lines += ["", "`detforge <command> --help` shows a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--verbose" in argv or os.environ.get("DETFORGE_DEBUG", "0") == "1"
    argv = [arg for arg in argv if arg != "--verbose"]
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from detforge import __version__

        print(f"detforge {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"detforge: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(f"detforge.commands.{name}")
    except ModuleNotFoundError as err:
        if err.name == f"detforge.commands.{name}":
            print(f"detforge: the {name!r} command is not available in this build", file=sys.stderr)
            return 2
        raise
    try:
        return int(module.main(rest) or 0)
    except Exception as err:
        user_error = None if debug else find_user_error(err)
        if user_error is None:
            raise
        print(f"detforge {name}: {user_message(user_error)}", file=sys.stderr)
        return exit_status(user_error)


if __name__ == "__main__":
    sys.exit(main())
