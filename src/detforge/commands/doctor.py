"""``detforge doctor --data SPEC``: check a dataset for every known problem and print a report.

Exits 1 when it found errors (skipped or unreadable records, wrong boxes, ...), 0 otherwise, and writes
``doctor_grid.png`` (sample images with their boxes) into ``--out``.
"""

from __future__ import annotations

import argparse

HELP = "check a data set for every known problem and print a report"


def build_parser() -> argparse.ArgumentParser:
    from detforge.data.spec import SPEC_FORMS

    parser = argparse.ArgumentParser(prog="detforge doctor", description=HELP)
    parser.add_argument(
        "--data",
        default="synthetic",
        help=f"dataset spec (default: synthetic); one of: {', '.join(SPEC_FORMS)}",
    )
    parser.add_argument("--split", choices=("train", "val"), default="train", help="which split to check")
    parser.add_argument("--out", default=".", help="folder for doctor_grid.png (default: current folder)")
    parser.add_argument(
        "--max-images",
        type=int,
        default=None,
        help="check only this many evenly spaced images (default: all files; 128 samples of generated data; 0: all)",
    )
    parser.add_argument("--grid", type=int, default=16, help="images in the sample grid (0: no grid)")
    parser.add_argument("--plain", action="store_true", help="plain text output (no colours)")
    return parser


def _print(text: str, ok: bool, plain: bool) -> None:
    if not plain:
        try:
            from rich.console import Console
            from rich.text import Text
        except ImportError:
            plain = True
    if plain:
        print(text)
        return
    console = Console(soft_wrap=True)
    body, _, verdict = text.rpartition("\n")
    console.print(Text(body))
    console.print(Text(verdict, style="bold green" if ok else "bold red"))


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from detforge.data.doctor import run_doctor

    report = run_doctor(
        args.data, out_dir=args.out, split=args.split, max_images=args.max_images, grid_images=args.grid
    )
    _print(report.to_text(), report.errors == 0, args.plain)
    return 1 if report.errors else 0
