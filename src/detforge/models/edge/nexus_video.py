"""Nexus on video: detection plus tracking with the model's object memory, one frame at a time.

Each frame runs the whole network (``Nexus.forward``) and the shared post-processing; every detection's
appearance (its P3 features pooled by RoIAlign) goes with it to the tracker as ``embeddings``. The default
tracker is ``memory`` (:class:`~detforge.tracking.memory.MemoryTracker`: the model's GRU memory, IoU +
appearance matching); any registered tracker can take its place (``NexusVideo(model, tracker=...)``).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import roi_align

from detforge.errors import InvalidValueError
from detforge.tracking import Tracker, create_tracker

__all__ = ["NexusVideo"]


class NexusVideo:
    """Stateful per-video runner around a ``Nexus`` model (``Nexus.track_frame`` creates one).

    Args:
        model: the ``Nexus`` model.
        tracker: a :class:`~detforge.tracking.Tracker`; default ``create_tracker("memory",
            memory=model.memory)``.
    """

    def __init__(self, model, tracker: Tracker | None = None) -> None:
        self.model = model
        self.tracker = tracker if tracker is not None else create_tracker("memory", memory=model.memory)

    def reset(self) -> None:
        """Start a new video (track ids from 1 again)."""
        self.tracker.reset()

    @torch.no_grad()
    def step(self, frame: Tensor) -> dict[str, Tensor]:
        """Detect and track in one frame (Tensor[C, H, W] or [1, C, H, W], float in [0, 1]).

        Returns:
            The tracker protocol's dict (``boxes`` [M, 4] xyxy pixels, ``scores`` [M], ``labels`` [M] int64,
            ``track_ids`` [M] int64, ``detection_indices`` [M]) plus ``box_log_var`` [M, 4], on the model's
            device.
        """
        m = self.model
        x = frame if frame.ndim == 4 else frame[None]  # [1, C, H, W]
        if x.ndim != 4 or x.shape[0] != 1:
            raise InvalidValueError(
                f"Nexus.track_frame takes one frame Tensor[C, H, W] or [1, C, H, W], got {tuple(frame.shape)}"
            )
        x = x.to(next(m.parameters()))
        h, w = x.shape[-2:]
        was_training = m.training
        m.eval()
        try:
            outputs = m(x)
            dets = m.postprocess(outputs, [(int(h), int(w))])[0]
            rois = torch.cat([dets["boxes"].new_zeros(len(dets["boxes"]), 1), dets["boxes"]], dim=1)  # [N, 5]
            pooled = roi_align(outputs["p3"], rois, output_size=2, spatial_scale=1 / 8, aligned=True)
            embeddings = pooled.mean(dim=(2, 3))  # [N, channels]
            tracks = self.tracker.update({**dets, "embeddings": embeddings}, x[0])
        finally:
            m.train(was_training)
        tracks["box_log_var"] = dets["box_log_var"][tracks["detection_indices"]]  # [M, 4]
        return tracks
