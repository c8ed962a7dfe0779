"""Test helper (imported by the DDP test's training processes): each rank writes its own view of the
validation metrics, so the test can check they agree."""

import json
from pathlib import Path

import lightning as L


class RankMetrics(L.Callback):
    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        values = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        stats = getattr(pl_module, "last_val_stats", None) or {}
        values["stats_map"] = float(stats["map"]) if "map" in stats else None
        values["world_size"] = trainer.world_size
        path = Path(self.out_dir) / f"rank{trainer.global_rank}.json"
        path.write_text(json.dumps(values))
