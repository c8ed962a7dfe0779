"""Tiny detectors for edge devices: Nexus (general objects, video), Phantom (faces, event-driven video) and
NightVision (thermal infrared). Importing this package registers them in ``detforge.models.registry``.
"""

from __future__ import annotations

from detforge.models.edge.nexus import Nexus, NexusConfig, nexus_training_step
from detforge.models.edge.nightvision import NightVision, NightVisionConfig, ThermalDomain
from detforge.models.edge.phantom import Phantom, PhantomConfig, phantom_training_step
from detforge.models.registry import register_model

__all__ = [
    "Nexus",
    "NexusConfig",
    "NightVision",
    "NightVisionConfig",
    "Phantom",
    "PhantomConfig",
    "ThermalDomain",
    "nexus_training_step",
    "phantom_training_step",
]


@register_model("nexus")
def nexus(num_classes: int = 20, in_chans: int = 3, **kwargs) -> Nexus:
    """Nexus, dual-pathway FCOS detector for video (~0.42M parameters), 320 x 320."""
    return Nexus(num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model("phantom")
def phantom(num_classes: int = 1, in_chans: int = 3, **kwargs) -> Phantom:
    """Phantom, event-driven face detector (~0.13M parameters), 128 x 128; one class ("face")."""
    if num_classes != 1:
        raise ValueError(f"phantom detects one class (face), got num_classes={num_classes}")
    return Phantom(in_chans=in_chans, **kwargs)


def _nightvision(cfg: NightVisionConfig, in_chans: int | None, kwargs: dict) -> NightVision:
    if in_chans is not None:
        cfg = cfg.with_overrides(in_chans=in_chans)
    if kwargs:
        cfg = cfg.with_overrides(**kwargs)
    return NightVision.with_config(cfg)


@register_model("nightvision_edge")
def nightvision_edge(num_classes: int = 1, in_chans: int | None = None, **kwargs) -> NightVision:
    """NightVision, smallest preset (~0.21M parameters), thermal 1-channel, 320 x 320."""
    return _nightvision(NightVisionConfig.edge(num_classes), in_chans, kwargs)


@register_model("nightvision_wildlife")
def nightvision_wildlife(num_classes: int = 5, in_chans: int | None = None, **kwargs) -> NightVision:
    """NightVision for animals in thermal imagery (~0.36M parameters)."""
    return _nightvision(NightVisionConfig.wildlife(num_classes), in_chans, kwargs)


@register_model("nightvision_human")
def nightvision_human(num_classes: int = 1, in_chans: int | None = None, **kwargs) -> NightVision:
    """NightVision for people in thermal imagery (~0.36M parameters)."""
    return _nightvision(NightVisionConfig.human().with_overrides(num_classes=num_classes), in_chans, kwargs)


@register_model("nightvision_vehicle")
def nightvision_vehicle(num_classes: int = 3, in_chans: int | None = None, **kwargs) -> NightVision:
    """NightVision for vehicles in thermal imagery (~0.36M parameters)."""
    return _nightvision(NightVisionConfig.vehicle(num_classes), in_chans, kwargs)


@register_model("nightvision_multi_domain")
def nightvision_multi_domain(num_classes: int = 8, in_chans: int | None = None, **kwargs) -> NightVision:
    """NightVision over all thermal domains with the domain-classification head (~0.36M parameters)."""
    return _nightvision(NightVisionConfig.multi_domain(num_classes), in_chans, kwargs)
