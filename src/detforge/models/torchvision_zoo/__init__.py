"""torchvision's COCO detectors as detforge models: each module registers the builders under torchvision's
builder names, the converter of torchvision's state dict and the ``coco`` weights' metadata."""

import importlib

for _module in ("fcos", "retinanet", "faster_rcnn", "ssdlite"):
    try:
        importlib.import_module(f"{__name__}.{_module}")
    except ModuleNotFoundError as _err:  # a family not built yet
        if _err.name != f"{__name__}.{_module}":
            raise
