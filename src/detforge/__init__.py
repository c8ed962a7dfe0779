"""detforge: train, evaluate and export object detectors on PyTorch.

``from detforge import ObjectDetector, DetectionDataModule, create_model, list_models, sliced_predict``: the names load on
first use, so ``import detforge`` stays cheap (no torch, Lightning or timm until one is asked for).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "ObjectDetector": "detforge.models.detector",
    "DetectionDataModule": "detforge.data.datamodule",
    "create_model": "detforge.models.registry",
    "list_models": "detforge.models.registry",
    "sliced_predict": "detforge.slicing.predict",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'detforge' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
