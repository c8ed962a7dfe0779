"""RoIAlign on all the CPU threads torch may use.

torchvision's CPU ``roi_align`` forward and backward are single-threaded loops over the RoIs; in a Faster
R-CNN training step on a CPU they are the largest single cost (about a third of the step at 320 px, batch 4,
512 RoIs per image) and a quarter of inference, with the other cores idle. Both split without changing a
number, each part running torchvision's own kernel on a thread of a small pool (the kernels release the GIL):

- forward: the RoIs in contiguous chunks, one per thread, outputs concatenated (rows are independent);
- backward: by image (a RoI only touches its own image's feature gradient), each image's RoIs through
  ``_roi_align_backward`` with a batch of one, the per-image gradients stacked (same kernel, same summation
  order per image).

Used only where it helps and is safe: CPU tensors, more than one torch thread (the pool has as many workers
as ``torch.get_num_threads()``), enough RoIs, and not while tracing or exporting (ONNX sees the plain
``roi_align``). bfloat16 / float16 features are pooled in float32 and cast back, as torchvision's autocast does.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor
from torchvision.ops import roi_align

__all__ = ["eager_on_cpu", "pooled_roi_align"]

_POOLS: dict[int, ThreadPoolExecutor] = {}
_MIN_ROIS_PER_WORKER = 32  # below this a chunk is not worth a thread hand-off


def _pool(workers: int) -> ThreadPoolExecutor:
    if workers not in _POOLS:
        _POOLS[workers] = ThreadPoolExecutor(workers, thread_name_prefix="detforge-roi-align")
    return _POOLS[workers]


def _forward(features: Tensor, rois: Tensor, output_size: int, scale: float, sampling_ratio: int) -> Tensor:
    """roi_align with the RoIs in one contiguous chunk per torch thread (Tensor[K, C, S, S])."""
    workers = min(torch.get_num_threads(), rois.shape[0] // _MIN_ROIS_PER_WORKER)
    if workers <= 1:
        return roi_align(features, rois, output_size, scale, sampling_ratio, aligned=False)
    parts = _pool(workers).map(
        lambda chunk: roi_align(features, chunk, output_size, scale, sampling_ratio, aligned=False),
        rois.chunk(workers),
    )
    return torch.cat(list(parts))  # [K, C, S, S]


class _ThreadedRoIAlign(torch.autograd.Function):
    @staticmethod
    def forward(ctx, features: Tensor, rois: Tensor, output_size: int, scale: float, sampling_ratio: int):
        ctx.save_for_backward(rois)
        ctx.options = (tuple(features.shape), output_size, scale, sampling_ratio)
        return _forward(features, rois, output_size, scale, sampling_ratio)

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


def eager_on_cpu(features: Tensor) -> bool:
    """Whether ``features`` are on the CPU in eager mode (not tracing, scripting or exporting to ONNX), where
    detforge's own RoIAlign kernels may replace torchvision's ``roi_align``."""
    return (
        features.device.type == "cpu"
        and not torch.jit.is_tracing()
        and not torch.jit.is_scripting()
        and not torch.onnx.is_in_onnx_export()
    )


def pooled_roi_align(
    features: Tensor, rois: Tensor, output_size: int, scale: float, sampling_ratio: int
) -> Tensor:
    """torchvision's ``roi_align(features, rois, output_size, scale, sampling_ratio, aligned=False)``
    (features Tensor[B, C, H, W], rois Tensor[K, 5] as (image index, x1, y1, x2, y2) -> Tensor[K, C, S, S]),
    split over the CPU threads where that is safe (module docstring)."""
    if not (eager_on_cpu(features) and torch.get_num_threads() > 1):
        return roi_align(features, rois, output_size, scale, sampling_ratio, aligned=False)
    if features.dtype not in (torch.float32, torch.float64):
        # torchvision's CPU kernels are float only; its autocast wrapper computes in float32 and casts back,
        # but autocast is per thread and the pool's threads do not see it: do the same here.
        pooled = pooled_roi_align(features.float(), rois.float(), output_size, scale, sampling_ratio)
        return pooled.to(features.dtype)  # [K, C, S, S]
    if features.requires_grad and torch.is_grad_enabled():
        return _ThreadedRoIAlign.apply(features, rois, output_size, scale, sampling_ratio)
    return _forward(features, rois, output_size, scale, sampling_ratio)
