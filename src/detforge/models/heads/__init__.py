"""Detection heads: layers only; assignment, losses and decoding live elsewhere."""

from detforge.models.heads.fcos import FCOSHead
from detforge.models.heads.yolox import YOLOXHead

__all__ = ["FCOSHead", "YOLOXHead"]
