"""detforge: train, evaluate and export object detectors on PyTorch."""

__version__ = "0.1.0"
