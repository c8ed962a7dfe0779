"""Detectors: backbones, necks, heads, the bare detectors and the flat model registry."""

from detforge.models.registry import create_model, is_model, list_models, register_model, register_prefix

__all__ = ["create_model", "is_model", "list_models", "register_model", "register_prefix"]
