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
    parser.add_argument(
        "--weights",
        action="store_true",
        help="list the registered named weights (source, licence, published COCO box AP, input, cached or not)",
    )
    return parser


def describe_weights(pattern: str | None = None) -> list[dict]:
    """One row per registered named weight: ``model``, ``tag``, ``source``, ``licence``, ``box_ap``,
    ``classes``, ``input`` (the pre-processing in words), ``params`` (millions), ``url`` and ``cached``."""
    import fnmatch

    from detforge.models.weights import cached_path, get_weights, list_weights

    rows = []
    for name, tag in list_weights():
        if pattern and not fnmatch.fnmatch(name, pattern):
            continue
        w = get_weights(name, tag)
        p = w.preprocess
        if p.resize == "shortest_edge":
            size = f"short side {p.min_size}, long <= {p.max_size}"
        elif p.resize == "fixed":
            size = f"{p.fixed_size[0]}x{p.fixed_size[1]}"
        else:
            size = f"long side {p.max_size}"
        rows.append(
            {
                "model": name,
                "tag": tag,
                "source": w.source,
                "licence": w.licence,
                "box_ap": w.metrics.get("coco/box_ap"),
                "classes": len(w.class_names),
                "input": size,
                "params": None if w.num_params is None else w.num_params / 1e6,
                "url": w.url,
                "cached": cached_path(w).is_file(),
            }
        )
    return rows


def print_weights(pattern: str | None = None) -> None:
    rows = describe_weights(pattern)
    if not rows:
        print("no named weights registered" + (f" for {pattern!r}" if pattern else ""))
        return
    width = max(len(r["model"]) for r in rows)
    print(
        f"{'model':<{width}}  {'weights':<7}  {'source':<11}  {'box AP':>6}  {'params (M)':>10}  "
        f"{'input':<28}  {'licence':<12}  cached"
    )
    for r in rows:
        ap = "-" if r["box_ap"] is None else f"{r['box_ap']:.1f}"
        params = "-" if r["params"] is None else f"{r['params']:.1f}"
        print(
            f"{r['model']:<{width}}  {r['tag']:<7}  {r['source']:<11}  {ap:>6}  {params:>10}  {r['input']:<28}  "
            f"{r['licence']:<12}  {'yes' if r['cached'] else 'no'}"
        )
    print("\nload: create_model(NAME, weights=TAG) or --model NAME --weights TAG (downloaded once into torch hub's cache)")


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

    if args.weights:
        print_weights(args.pattern)
        return 0
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
