"""The COCO label space of torchvision's detectors.

torchvision's COCO models predict 91 indices: 0 is the background and 1..90 are COCO's category ids, 12 of
which are unused ("N/A"). detforge keeps the 90 category ids as contiguous labels 0..89 (label = torchvision
index - 1 = COCO category id - 1), so a checkpoint loads exactly: a sigmoid head (FCOS, RetinaNet) drops the
background row of its class layer, a softmax head (Faster R-CNN, SSD) keeps the background internal.
"""

from __future__ import annotations

from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

__all__ = ["COCO_CATEGORY_IDS", "COCO_CLASS_NAMES", "NUM_COCO_CLASSES"]

COCO_CLASS_NAMES: tuple[str, ...] = tuple(FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"][1:])
"""The 90 class names of labels 0..89 ("N/A" for the unused ids), torchvision's list without background."""

COCO_CATEGORY_IDS: tuple[int, ...] = tuple(range(1, len(COCO_CLASS_NAMES) + 1))
"""The COCO category id of each label (label + 1)."""

NUM_COCO_CLASSES = len(COCO_CLASS_NAMES)
