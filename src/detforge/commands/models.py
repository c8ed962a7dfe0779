"""``detforge models``: the registered models with their parameter counts and default input sizes."""

from __future__ import annotations

import argparse

HELP = "list the registered models with their parameter counts"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="detforge models", description=__doc__.splitlines()[0])
    parser.add_argument("pattern", nargs="?", default=None, help="fnmatch filter, e.g. 'yolox_*'")
    parser.add_argument(
        "--num-classes",
        type=int,
        default=None,
        help="classes to build each model with (default: each builder's own, e.g. 80 for COCO-style models)",
    )
    parser.add_argument("--names-only", action="store_true", help="print only the names (no model is built)")
    return parser


def describe_models(pattern: str | None = None, num_classes: int | None = None) -> list[dict]:
    """One row per registered model: ``name``, ``params`` (millions), ``input_size`` (h, w), ``in_chans``,
    or ``error`` when the model cannot be built here."""
    from detforge.models.registry import create_model, list_models

    rows = []
    for name in list_models(pattern):
        try:
            model = create_model(name, **({} if num_classes is None else {"num_classes": num_classes}))
        except Exception as err:  # one broken builder must not hide the others
            rows.append({"name": name, "error": f"{type(err).__name__}: {err}"})
            continue
        rows.append(
            {
                "name": name,
                "params": sum(p.numel() for p in model.parameters()) / 1e6,
                "input_size": tuple(getattr(model, "default_input_size", ()) or ()),
                "in_chans": getattr(model, "in_chans", 3),
                "num_classes": getattr(model, "num_classes", None),
            }
        )
    return rows


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from detforge.models.registry import _PREFIXES, list_models

    if args.names_only:
        print("\n".join(list_models(args.pattern)))
        return 0
    rows = describe_models(args.pattern, args.num_classes)
    width = max([len(r["name"]) for r in rows] + [5])
    print(f"{'model':<{width}}  {'params (M)':>10}  {'input (h, w)':>12}  {'chans':>5}  {'classes':>7}")
    for r in rows:
        if "error" in r:
            print(f"{r['name']:<{width}}  cannot build: {r['error']}")
            continue
        size = "x".join(str(v) for v in r["input_size"]) or "-"
        print(
            f"{r['name']:<{width}}  {r['params']:>10.2f}  {size:>12}  {r['in_chans']:>5}  {r['num_classes']!s:>7}"
        )
    if _PREFIXES:
        print("\nalso: " + ", ".join(f"{p}<timm name>" for p in sorted(_PREFIXES)) + " (any timm backbone)")
    return 0
