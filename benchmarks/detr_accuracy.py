"""mAP against training time for the set-prediction detectors next to ``detforge_n`` (issue 15).

Each (model, budget) pair is one ``detforge train --model NAME`` run of the default recipe (synthetic:1024 at
128 px, batch 16, the schedule fitted to ``--trainer.max_time``; each model's registered recipe), run
one after the other through :func:`family_accuracy.train`; the final validation mAP@[.5:.95] is read from
the run's ``results.json``. The recipe's 30-epoch cap is lifted (``--trainer.max_epochs 100000`` unless the
extra flags set the epochs), so the budget, not the epoch count, ends every run: at 30 epochs of 64 steps a
fast model would stop before 20 minutes, and on 128 images (8 steps an epoch) after two. A model that is not
registered is reported and skipped. Never run beside another benchmark.

    uv run python benchmarks/detr_accuracy.py [--models detr_n rtdetr_n detforge_n]
        [--budgets 00:00:05:00 00:00:10:00 00:00:20:00] [--data synthetic:1024]
        [--project runs/detr_accuracy] [--model-kwargs NAME=JSON ...] [--out rows.json] [-- extra train flags]

Fine-tuning on little data: ``--data synthetic:128 --budgets 00:00:10:00``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from detforge.engine.memory_format import cpu_name  # noqa: E402
from detforge.models.registry import is_model  # noqa: E402
from family_accuracy import train  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["detr_n", "rtdetr_n", "detforge_n"])
    parser.add_argument("--budgets", nargs="+", default=["00:00:05:00", "00:00:10:00", "00:00:20:00"])
    parser.add_argument("--data", default="synthetic:1024")
    parser.add_argument("--project", default="runs/detr_accuracy")
    parser.add_argument(
        "--model-kwargs",
        nargs="*",
        default=[],
        metavar="NAME=JSON",
        help="one model's --model.model_kwargs (e.g. rtdetr_n='{\"num_queries\": 50}')",
    )
    parser.add_argument("--out", default=None, help="also write the rows as JSON here")
    args = parser.parse_args(argv)

    print(
        f"CPU: {cpu_name()}, capability {torch.backends.cpu.get_cpu_capability()}"
    )
    if not any(flag.split("=")[0] in ("--epochs", "--trainer.max_epochs") for flag in extra):
        extra = ["--trainer.max_epochs", "100000", *extra]  # the budget ends the run
    print(f"data {args.data}, budgets {' '.join(args.budgets)}, extra flags {extra}")
    rows = []
    for name in args.models:
        if not is_model(name):
            print(f"{name}: not registered, skipped", flush=True)
            continue
        for budget in args.budgets:
            run_args = argparse.Namespace(
                data=args.data, budget=budget, project=args.project, model_kwargs=args.model_kwargs
            )
            row = {"budget": budget, **train(name, run_args, extra)}
            rows.append(row)
            print(json.dumps(row), flush=True)

    names = list(dict.fromkeys(r["model"] for r in rows))
    print(f"\nmAP@[.5:.95] on {args.data} by training budget (h:m:s), optimizer steps in brackets")
    print(f"{'model':<14}" + "".join(f"{b[3:]:>16}" for b in args.budgets))
    for name in names:
        cells = []
        for budget in args.budgets:
            row = next((r for r in rows if r["model"] == name and r["budget"] == budget), None)
            if row is None or "map" not in row:
                cells.append("-" if row is None else "failed")
            else:
                cells.append(f"{row['map']:.3f} ({row.get('steps')})")
        print(f"{name:<14}" + "".join(f"{c:>16}" for c in cells))
    for r in rows:
        if "map" not in r:
            print(f"{r['model']} @ {r['budget']} failed: {r['error']}")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
