"""Test helper (imported by the spawned processes of ``test_ddp_normalisation.py``): each rank runs the three
criteria on its own targets under DDP and once with torch.distributed hidden (one process), and writes both,
with every rank's positive count and centerness-target sum, to ``rank{r}.json``."""

import json
from pathlib import Path
from unittest import mock

import torch
import torch.distributed as dist

from detforge.boxes import grid_points
from detforge.models.criteria import FCOSCriterion, SingleScaleCriterion, YOLOXCriterion
from detforge.targets import pad_targets

STRIDES = (8, 16, 32)
SIZES = [(8, 8), (4, 4), (2, 2)]  # a 64 x 64 image

RANK_BOXES = [  # rank 0: five boxes over two images, rank 1: one box
    [[[4, 4, 20, 30], [30, 30, 60, 62], [5, 40, 25, 60]], [[8, 8, 56, 56], [40, 2, 60, 20]]],
    [[[10, 12, 40, 50]], []],
]


def rank_targets(rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Padded gt_boxes [2, G, 4], gt_labels [2, G], gt_mask [2, G] of the rank's two images."""
    targets = [
        {"boxes": torch.tensor(b, dtype=torch.float32).reshape(-1, 4), "labels": torch.arange(len(b)) % 3}
        for b in RANK_BOXES[rank]
    ]
    return pad_targets(targets)


def outputs(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    points, strides = grid_points(SIZES, STRIDES)
    p = points.shape[0]
    return {
        "cls_logits": torch.randn(2, p, 3, generator=g),
        "box_reg": (torch.randn(2, p, 4, generator=g) * 0.5).exp() * 2 * strides[:, None],
        "centerness": torch.randn(2, p, generator=g),
        "box_log_var": torch.randn(2, p, 4, generator=g) * 0.5,
        "boxes": torch.cat([points - 2 * strides[:, None], points + 2 * strides[:, None]], -1).expand(
            2, p, 4
        ),
        "obj_logits": torch.randn(2, p, generator=g),
        "cls_map": torch.randn(2, 1, 16, 16, generator=g),
        "box_map": torch.randn(2, 4, 16, 16, generator=g),
    }


def run_criteria(rank: int) -> dict[str, dict[str, float]]:
    out, (gt_boxes, gt_labels, gt_mask) = outputs(), rank_targets(rank)
    fcos = FCOSCriterion(STRIDES, uncertainty_weight=0.5)
    yolox = YOLOXCriterion(STRIDES)
    single = SingleScaleCriterion(4)
    results = {
        "fcos": fcos(
            out["cls_logits"],
            out["box_reg"],
            out["centerness"],
            SIZES,
            gt_boxes,
            gt_labels,
            gt_mask,
            box_log_var=out["box_log_var"],
        ),
        "yolox": yolox(
            out["cls_logits"], out["boxes"], out["obj_logits"], SIZES, gt_boxes, gt_labels, gt_mask
        ),
        "single_scale": single(out["cls_map"], out["box_map"], gt_boxes, gt_mask),
    }
    assigned = fcos.assigner(SIZES, gt_boxes, gt_labels, gt_mask)
    ctr_sum = assigned.centerness[assigned.labels >= 0].sum()
    return {
        **{name: {k: float(v) for k, v in losses.items()} for name, losses in results.items()},
        "fcos_ctr_sum": {"value": float(ctr_sum)},
    }


def worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        ddp = run_criteria(rank)
        with mock.patch.object(dist, "is_initialized", return_value=False):
            local = run_criteria(rank)
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps({"ddp": ddp, "local": local}))
    finally:
        dist.destroy_process_group()
