"""Necks: modules between a backbone's feature maps and a detection head."""

from detforge.models.necks.fpn import FPN
from detforge.models.necks.simple_pyramid import SimplePyramid

__all__ = ["FPN", "SimplePyramid"]
