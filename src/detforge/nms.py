"""Hard NMS inside groups of boxes (one group per image and class, or per image and level), all groups at once.

torchvision's ``batched_nms`` beyond 1,000 boxes on the CPU takes each group's boxes with a mask over all N
boxes (``idxs == group`` then ``nonzero``): G passes over N, which for a batch of 8 images and 20 classes
(160 groups, ~30,000 candidates) costs about as much as the suppression itself. :func:`grouped_nms` sorts the
boxes by group once and runs torchvision's ``nms`` on each group's contiguous slice: the same kept boxes.
Below that size, on other devices, and while tracing or compiling (ONNX graphs) it is torchvision's
``batched_nms``, one call with the groups' boxes shifted apart.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import batched_nms, nms

__all__ = ["grouped_nms"]

# torchvision's own switch: one nms call on shifted boxes up to 1,000 boxes (4,000 coordinates) on the CPU.
_ONE_CALL_MAX_BOXES = 1000


def _tracing() -> bool:
    return bool(torch._C._get_tracing_state()) or torch.compiler.is_compiling() or torch.jit.is_scripting()


def grouped_nms(boxes: Tensor, scores: Tensor, groups: Tensor, iou_thresh: float) -> Tensor:
    """Hard NMS inside each group: a box is dropped when a higher-scoring box of its group overlaps it with
    IoU above ``iou_thresh``; boxes of different groups never suppress each other.

    Args:
        boxes: Tensor[N, 4] xyxy.
        scores: Tensor[N].
        groups: Tensor[N] int64 group of each box (e.g. ``image * C + class``).

    Returns:
        the kept indices into the inputs, Tensor[K] int64, by decreasing score (equal scores: lower index
        first on the CPU path; torchvision's order otherwise).
    """
    if boxes.device.type != "cpu" or boxes.shape[0] <= _ONE_CALL_MAX_BOXES or _tracing():
        return batched_nms(boxes, scores, groups, iou_thresh)
    order = torch.argsort(groups, stable=True)  # [N] group by group, input order inside each
    _, counts = torch.unique_consecutive(groups[order], return_counts=True)  # [G]
    sorted_boxes, sorted_scores = boxes[order], scores[order]  # [N, 4], [N]
    kept, start = [], 0
    for count in counts.tolist():
        stop = start + count
        kept.append(nms(sorted_boxes[start:stop], sorted_scores[start:stop], iou_thresh) + start)
        start = stop
    keep = order[torch.cat(kept)].sort().values  # [K] ascending: stable ties below
    return keep[torch.argsort(scores[keep], descending=True, stable=True)]
