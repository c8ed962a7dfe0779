"""``detforge`` command line: a thin dispatcher; each sub-command lives in ``detforge.commands.<name>``.

Every command module exposes ``main(argv: list[str]) -> int`` and a one-line ``HELP``. Imports are lazy so
``detforge --help`` stays fast. A ``RunError`` (``detforge.engine.trainer``) from any command is printed as
one line on stderr and the exit status is 1.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "train": "train a detector (default: small model on the built-in synthetic data set)",
    "val": "evaluate a checkpoint on a data set, or a COCO results JSON against its ground truth",
    "predict": "run a checkpoint on images, folders or globs; draw boxes and write JSON",
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
        if _is_run_error(err):
            print(f"detforge {name}: {err}", file=sys.stderr)
            return 1
        raise


def _is_run_error(err: BaseException) -> bool:
    """``detforge.engine.trainer.RunError`` (nothing to resume, an unwritable or full run folder...): a
    one-line message for the user, not a traceback. Only looked up when that module is loaded, so commands
    that never import it stay fast."""
    module = sys.modules.get("detforge.engine.trainer")
    run_error = getattr(module, "RunError", None)
    return run_error is not None and isinstance(err, run_error)


if __name__ == "__main__":
    sys.exit(main())
