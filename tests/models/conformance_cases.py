"""Shared by the conformance test and its DDP worker processes (imported by module name, so spawned
processes can import it): how a registered model is built and which targets it must take."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import torch

from detforge.models.base import Detector
from detforge.models.registry import create_model

H, W = 64, 96  # small and non-square, so a swapped (h, w) shows


def build(name: str) -> Detector:
    torch.manual_seed(0)
    model = create_model(name)
    return model.eval()


def target(boxes: list[list[float]], labels: list[int], image_id: int) -> dict:
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "image_id": image_id,
        "size": torch.tensor([H, W]),
        "orig_size": torch.tensor([H, W]),
    }


def edge_case_batches(num_classes: int) -> dict[str, list[dict]]:
    """Batches of two images' targets: every edge case the protocol must take."""
    c = num_classes
    return {
        "no_boxes": [target([], [], 0), target([], [], 1)],
        "one_box": [target([[20.0, 12.0, 52.0, 44.0]], [c - 1], 0), target([], [], 1)],
        "border_boxes": [
            target([[0.0, 0.0, 30.0, 24.0], [66.0, 40.0, float(W), float(H)]], [0, c - 1], 0),
            target([[0.0, 0.0, float(W), float(H)]], [0], 1),
        ],
        "different_counts": [
            target(
                [[4.0, 4.0, 20.0, 28.0], [30.0, 10.0, 70.0, 50.0], [60.0, 30.0, 90.0, 60.0]], [0, 0, c - 1], 0
            ),
            target([[10.0, 20.0, 40.0, 60.0]], [c - 1], 1),
        ],
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_losses(targets: list[dict], names: list[str]) -> dict[str, dict[str, float]]:
    """Every model's loss parts on ``targets`` (eval mode, so BatchNorm does not mix the ranks' images)."""
    out = {}
    for name in names:
        model = build(name)
        images = torch.stack(  # one image per image_id, the same in every process
            [
                torch.rand(model.in_chans, H, W, generator=torch.Generator().manual_seed(100 + t["image_id"]))
                for t in targets
            ]
        )
        batch = [dict(t, labels=t["labels"].clamp(max=model.num_classes - 1)) for t in targets]
        with torch.no_grad():
            _, losses = model.forward_loss(images, batch)
        out[name] = {
            k: float(v) for k, v in losses.items() if k != "num_pos" and torch.as_tensor(v).numel() == 1
        }
    return out


def halves() -> list[list[dict]]:
    cases = edge_case_batches(2)
    rank0 = [cases["different_counts"][0], cases["one_box"][0]]  # 3 + 1 boxes
    rank1 = [cases["border_boxes"][1], cases["no_boxes"][0]]  # 1 + 0 boxes
    return [
        [dict(t, image_id=i) for i, t in enumerate(rank0)],
        [dict(t, image_id=2 + i) for i, t in enumerate(rank1)],
    ]


def ddp_worker(rank: int, port: int, out_dir: str, names: list[str]) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        losses = rank_losses(halves()[rank], names)
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(losses))
    finally:
        dist.destroy_process_group()
