"""Detectors: backbones, necks, heads, the bare detectors, the flat model registry and its named weights."""

from detforge.models.registry import (
    create_model,
    is_model,
    list_models,
    model_recipe,
    register_model,
    register_prefix,
)
from detforge.models.weights import Weights, get_weights, list_weights, register_weights

__all__ = [
    "Weights",
    "create_model",
    "get_weights",
    "is_model",
    "list_models",
    "list_weights",
    "model_recipe",
    "register_model",
    "register_prefix",
    "register_weights",
]
