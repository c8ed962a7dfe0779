"""Test helper (imported by the spawned processes of ``test_multi_scale.py``): each rank resizes its own
batches with a ``MultiScale`` seeded differently per rank, so only rank 0's broadcast can make the sizes agree,
and writes the sizes it got to ``rank{r}.json``."""

import json
from pathlib import Path

import torch
import torch.distributed as dist

from detforge.data.multi_scale import MultiScale


def _batch(rank: int, n: int, size: int = 128):
    images = torch.rand(n, 3, size, size)
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0]]), "size": torch.tensor([size, size - 32])}]
    return images, targets * n


def worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        fixed = MultiScale((0.5, 1.5), every=2, seed=100 + rank, num_draws=4)
        keep = MultiScale((0.5, 1.5), seed=200 + rank, num_draws=4)
        sizes, contents = [], []
        for step in range(12):
            images, targets = _batch(rank, 4 if rank == 0 or step % 3 else 2)  # rank 1: a smaller batch
            out, _ = fixed(images, targets, stride=32)
            sizes.append(list(out.shape[-2:]))
            out, new = keep(images, targets, stride=32, mode="keep_ratio")
            contents.append([list(out.shape[-2:]), new[0]["size"].tolist()])
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps({"fixed": sizes, "keep_ratio": contents}))
    finally:
        dist.destroy_process_group()
