"""RoIAlign whose backward runs one image per CPU thread.

torchvision's CPU ``roi_align`` backward is a single-threaded loop over the RoIs; in a Faster R-CNN training
step on a CPU it is the largest single cost (about a third of the step at 320 px, batch 4, 512 RoIs per
image), with the other cores idle. A RoI only touches its own image's feature gradient, so the backward splits
by image: each image's RoIs go through torchvision's own backward kernel (``_roi_align_backward``, batch size
1) on a thread of a small pool (the kernel releases the GIL), and the per-image gradients are stacked. The
result equals torchvision's exactly (same kernel, same summation order per image). The forward is
torchvision's.

Used only where it helps and is safe: CPU tensors that need a gradient, more than one image and more than one
torch thread, and not while tracing or exporting (ONNX sees the plain ``roi_align``).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor
from torchvision.ops import roi_align

__all__ = ["pooled_roi_align"]

_POOLS: dict[int, ThreadPoolExecutor] = {}


def _pool(workers: int) -> ThreadPoolExecutor:
    if workers not in _POOLS:
        _POOLS[workers] = ThreadPoolExecutor(workers, thread_name_prefix="detforge-roi-align")
    return _POOLS[workers]


class _PerImageBackwardRoIAlign(torch.autograd.Function):
    @staticmethod
    def forward(ctx, features: Tensor, rois: Tensor, output_size: int, scale: float, sampling_ratio: int):
        ctx.save_for_backward(rois)
        ctx.options = (tuple(features.shape), output_size, scale, sampling_ratio)
        return roi_align(features, rois, output_size, scale, sampling_ratio, aligned=False)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (rois,) = ctx.saved_tensors
        (num_images, channels, height, width), size, scale, ratio = ctx.options
        grad = grad.contiguous()  # [K, C, S, S]
        image = rois[:, 0].to(torch.int64)  # [K]
        order = torch.argsort(image, stable=True)
        counts = torch.bincount(image, minlength=num_images).tolist()
        local = rois[order].clone()
        local[:, 0] = 0  # each image's RoIs against a batch of one
        chunks = zip(local.split(counts), grad[order].split(counts))  # per image: [K_b, 5], [K_b, C, S, S]

        def one(chunk: tuple[Tensor, Tensor]) -> Tensor:  # -> [1, C, H, W]
            image_rois, image_grad = chunk
            if image_rois.shape[0] == 0:
                return image_grad.new_zeros(1, channels, height, width)
            return torch.ops.torchvision._roi_align_backward(
                image_grad, image_rois, scale, size, size, 1, channels, height, width, ratio, False
            )

        workers = max(1, min(torch.get_num_threads(), num_images))
        return torch.cat(list(_pool(workers).map(one, chunks))), None, None, None, None  # [B, C, H, W]


def pooled_roi_align(
    features: Tensor, rois: Tensor, output_size: int, scale: float, sampling_ratio: int
) -> Tensor:
    """torchvision's ``roi_align(features, rois, output_size, scale, sampling_ratio, aligned=False)``
    (features Tensor[B, C, H, W], rois Tensor[K, 5] as (image index, x1, y1, x2, y2) -> Tensor[K, C, S, S]),
    with the backward split by image over CPU threads where that is safe (module docstring)."""
    parallel = (
        features.device.type == "cpu"
        and features.requires_grad
        and torch.is_grad_enabled()
        and features.shape[0] > 1
        and torch.get_num_threads() > 1
        and not torch.jit.is_tracing()
        and not torch.jit.is_scripting()
        and not torch.onnx.is_in_onnx_export()
    )
    if not parallel:
        return roi_align(features, rois, output_size, scale, sampling_ratio, aligned=False)
    return _PerImageBackwardRoIAlign.apply(features, rois, output_size, scale, sampling_ratio)
