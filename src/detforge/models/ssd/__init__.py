"""SSD in its SSDlite form: MobileNetV3 body + extra levels, depthwise prediction heads, default boxes,
softmax classes with hard-negative mining. ``ssdlite320_mobilenet_v3_large`` (torchvision's builder name, COCO
weights) is registered in :mod:`detforge.models.torchvision_zoo.ssdlite`."""

from detforge.models.ssd.anchors import DefaultBoxes
from detforge.models.ssd.extractor import SSDLiteExtractor
from detforge.models.ssd.head import SSDLiteHead
from detforge.models.ssd.model import SSD

__all__ = ["SSD", "DefaultBoxes", "SSDLiteExtractor", "SSDLiteHead"]
