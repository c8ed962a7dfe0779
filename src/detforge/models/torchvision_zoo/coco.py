"""The COCO label space of torchvision's detectors.

torchvision's COCO models predict 91 indices: 0 is the background and 1..90 are COCO's category ids, 12 of
which are unused ("N/A"). detforge keeps the 90 category ids as contiguous labels 0..89 (label = torchvision
index - 1 = COCO category id - 1), so a checkpoint loads exactly: a sigmoid head (FCOS, RetinaNet) drops the
background row of its class layer, a softmax head (Faster R-CNN, SSD) keeps the background internal.
"""

from __future__ import annotations

from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

from detforge.models.preprocess import Preprocess

__all__ = [
    "COCO_CATEGORY_IDS",
    "COCO_CLASS_NAMES",
    "NUM_COCO_CLASSES",
    "TUTORIAL_FINETUNE",
    "torchvision_preprocess",
]

COCO_CLASS_NAMES: tuple[str, ...] = tuple(FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"][1:])
"""The 90 class names of labels 0..89 ("N/A" for the unused ids), torchvision's list without background."""

COCO_CATEGORY_IDS: tuple[int, ...] = tuple(range(1, len(COCO_CLASS_NAMES) + 1))
"""The COCO category id of each label (label + 1)."""

NUM_COCO_CLASSES = len(COCO_CLASS_NAMES)


TUTORIAL_FINETUNE: dict = {
    "model.optimizer": "sgd",
    "model.lr": 0.005,
    "model.optimizer_kwargs": {"momentum": 0.9},
    "model.weight_decay": 5e-4,
    "model.scheduler": "step",
    "model.scheduler_kwargs": {"step_size": 3, "gamma": 0.1},
}
"""Fine-tuning from COCO weights as torchvision's detection tutorial does it (SGD, lr 0.005 for batches of 2,
momentum 0.9, weight decay 5e-4, StepLR(3, 0.1) over epochs, after detforge's general warmup)."""


def torchvision_preprocess(min_size: int, max_size: int) -> Preprocess:
    """torchvision's ``GeneralizedRCNNTransform``: shorter side to ``min_size`` (longer at most ``max_size``),
    ImageNet normalisation, batch padded to a multiple of 32 with the mean colour."""
    return Preprocess(
        resize="shortest_edge", min_size=int(min_size), max_size=int(max_size), size_divisible=32
    )
