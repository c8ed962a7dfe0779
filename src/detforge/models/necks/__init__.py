"""Necks: modules between a backbone's feature maps and a detection head."""

from detforge.models.necks.fpn import FPN

__all__ = ["FPN"]
