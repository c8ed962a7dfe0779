"""DETR-family detectors; importing this package registers their builders (``rtdetr_<timm name>``,
``rtdetr_n``)."""

from detforge.models.detr.rtdetr import RTDETR, build_rtdetr, rtdetr_n

__all__ = ["RTDETR", "build_rtdetr", "rtdetr_n"]
