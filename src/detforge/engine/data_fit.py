"""Fitting a model's data-dependent settings to the training data before training (YOLOv3's ``anchors="auto"``).

A model that needs it says so with ``needs_data_fit`` and takes ``fit_to_data(boxes_wh Tensor[N, 2])``
(the training boxes' widths and heights in pixels at the training size); ``ObjectDetector.on_fit_start`` calls
:func:`fit_model_to_data` once. A resumed run or a loaded checkpoint already has the fitted values (buffers).
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn

__all__ = ["fit_model_to_data"]


def fit_model_to_data(model: nn.Module, trainer: L.Trainer, module: nn.Module, imgsz: int | None) -> None:
    """Fit ``model`` (the detector inside the Lightning ``module``) to the train split of ``trainer``'s data
    module at ``imgsz`` (default: the data module's), and copy its new buffers into any weight-averaged (EMA)
    copy a callback made before ``on_fit_start``."""
    datamodule = getattr(trainer, "datamodule", None)
    dataset = getattr(datamodule, "train_dataset", None)
    if dataset is None:
        rank_zero_warn(
            f"{type(model).__name__}: no datamodule with a train_dataset to fit the model to (e.g. "
            "anchors='auto'); keeping its defaults"
        )
        return
    from detforge.anchors import dataset_boxes_wh

    imgsz = getattr(datamodule, "imgsz", None) or imgsz or max(model.default_input_size)
    fitted = model.fit_to_data(dataset_boxes_wh(dataset, int(imgsz)))
    own = dict(module.named_buffers())
    for callback in trainer.callbacks:
        averaged = getattr(callback, "_average_model", None)
        if averaged is not None:
            for name, buffer in averaged.module.named_buffers():
                if name in own and own[name].shape == buffer.shape:
                    buffer.copy_(own[name])
    rank_zero_info(f"{type(model).__name__} fitted to the training boxes at {imgsz} px: {fitted}")
