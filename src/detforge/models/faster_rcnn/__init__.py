"""Faster R-CNN with FPN: the two-stage family (model, RPN, RoI head, anchors, zoo registrations)."""

from detforge.models.faster_rcnn.model import FasterRCNN
from detforge.models.faster_rcnn.zoo import build_faster_rcnn, faster_rcnn_n

__all__ = ["FasterRCNN", "build_faster_rcnn", "faster_rcnn_n"]
