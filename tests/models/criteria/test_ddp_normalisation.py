"""Under DDP every criterion divides by the positives averaged over the ranks, not by its own rank's count:
two gloo processes with different positive counts (``ddp_criteria.py``) run the FCOS, YOLOX and single-scale
criteria, and each rank's loss parts equal its one-process parts rescaled from its own count to the mean."""

import json
import os
import socket
import sys
from pathlib import Path

import pytest
import torch.multiprocessing as mp

NUM_POS_KEYS = {
    "fcos": ("cls_loss", "centerness_loss", "uncertainty_loss"),
    "yolox": ("cls_loss", "reg_loss", "obj_loss"),
    "single_scale": ("cls_loss", "reg_loss"),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.timeout(600)  # about 10 s on an idle machine; importing torch in two processes dominates
def test_normalisers_are_averaged_over_ranks(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import ddp_criteria

    mp.spawn(ddp_criteria.worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads(Path(tmp_path, f"rank{r}.json").read_text()) for r in range(2)]
    failures = []
    for name, keys in NUM_POS_KEYS.items():
        counts = [r["local"][name]["num_pos"] for r in ranks]
        assert counts[0] != counts[1], f"{name}: the ranks must have different positive counts, got {counts}"
        mean = max(sum(counts) / 2, 1.0)
        for rank, result in enumerate(ranks):
            assert result["ddp"][name]["num_pos"] == counts[rank]  # the logged count stays the rank's own
            for key in keys:
                expected = result["local"][name][key] * max(counts[rank], 1.0) / mean
                got = result["ddp"][name][key]
                if abs(got - expected) > 1e-5 * max(abs(expected), 1e-3):
                    failures.append(
                        f"rank {rank} {name}.{key}: {got:.6g} != {expected:.6g} (counts {counts})"
                    )
    ctr = [r["local"]["fcos_ctr_sum"]["value"] for r in ranks]
    for rank, result in enumerate(ranks):  # FCOS's box loss: the centerness-target sum averaged over ranks
        expected = result["local"]["fcos"]["reg_loss"] * max(ctr[rank], 1e-6) / max(sum(ctr) / 2, 1e-6)
        got = result["ddp"]["fcos"]["reg_loss"]
        if abs(got - expected) > 1e-5 * max(abs(expected), 1e-3):
            failures.append(f"rank {rank} fcos.reg_loss: {got:.6g} != {expected:.6g} (centerness sums {ctr})")
    assert not failures, "\n".join(failures)
