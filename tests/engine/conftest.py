"""Shared pieces of the measured-choice tests (memory format, CPU precision): a tiny FCOS and a cache folder."""

from __future__ import annotations

import pytest
import torch

from detforge.models.fcos import FCOS


@pytest.fixture
def tiny():
    """A factory of the same tiny FCOS (resnet10t, 64 px, seeded): one model per call."""

    def make() -> FCOS:
        torch.manual_seed(0)
        return FCOS("resnet10t", 3, fpn_channels=16, head_num_convs=1, extra_levels=0, input_size=(64, 64))

    return make


@pytest.fixture
def measurement_cache(tmp_path, monkeypatch):
    """The path of the measurement cache, in a fresh folder (``DETFORGE_CACHE_DIR``)."""
    monkeypatch.setenv("DETFORGE_CACHE_DIR", str(tmp_path))
    return tmp_path / "memory_format.json"
