"""Channels-last or NCHW chosen by measurement, cached per machine / model / shape, state left untouched."""

from __future__ import annotations

import json

import pytest
import torch

from detforge.engine.memory_format import choose_channels_last, set_channels_last


@pytest.fixture
def cache(measurement_cache, monkeypatch):
    monkeypatch.delenv("DETFORGE_MEMORY_FORMAT", raising=False)
    return measurement_cache


@pytest.mark.parametrize("nchw_faster", [True, False])
def test_the_faster_format_is_chosen_and_cached(cache, nchw_faster, tiny):
    model = tiny().train()
    calls = []

    def timer(probe, images, train):
        calls.append(probe.channels_last)
        assert probe is not model and images.shape == (2, 3, 64, 64)
        return 0.1 if probe.channels_last != nchw_faster else 0.2

    choice, why = choose_channels_last(model, (2, 3, 64, 64), timer=timer)
    assert choice is (not nchw_faster) and "measured" in why
    # a warm-up in each format, then two ABBA rounds
    assert calls == [True, False] + [False, True, True, False] * 2
    entry = next(iter(json.loads(cache.read_text()).values()))
    assert entry["channels_last"] is choice

    def never(*_):
        raise AssertionError("measured again")

    again, why = choose_channels_last(model, (2, 3, 64, 64), timer=never)
    assert again is choice and "before" in why
    # another shape or inference is another measurement
    assert choose_channels_last(model, (2, 3, 64, 64), train=False, timer=timer)[0] is choice


def test_a_step_of_seconds_is_measured_in_one_round(cache, tiny):
    """At real input sizes a step costs seconds: a warm-up per format and one ABBA round."""
    calls = []

    def timer(probe, images, train):
        calls.append(probe.channels_last)
        return 3.0 if probe.channels_last else 2.5

    choice, why = choose_channels_last(tiny().train(), (2, 3, 64, 64), timer=timer)
    assert calls == [True, False, False, True, True, False] and choice is False and "2500 ms" in why


def test_a_steady_drift_does_not_decide(cache, tiny):
    """Every step 10% faster than the one before (a machine settling after start-up): two equally fast
    formats measured in ABBA order come out equal, where measuring one format first would favour the other."""
    calls = []

    def timer(probe, images, train):
        calls.append(probe.channels_last)
        return 1.0 - 0.05 * len(calls) + (0.0 if probe.channels_last else 0.001)

    choice, why = choose_channels_last(tiny().train(), (2, 3, 64, 64), timer=timer)
    assert choice is True  # channels-last is 1 ms faster at every moment; the drift is 50 ms a step


def test_the_model_is_left_as_it_was(cache, tiny):
    model = tiny().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    choose_channels_last(model, (2, 3, 64, 64))  # real timing: BatchNorm statistics and grads must not move
    assert torch.equal(torch.get_rng_state(), rng)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert all(p.grad is None for p in model.parameters())
    assert model.channels_last  # unchanged until the caller switches it


def test_a_fixed_format_is_not_measured(cache, monkeypatch, tiny):
    monkeypatch.setenv("DETFORGE_MEMORY_FORMAT", "nchw")
    choice, why = choose_channels_last(tiny(), (2, 3, 64, 64), timer=lambda *_: pytest.fail("measured"))
    assert choice is False and "fixed" in why and not cache.exists()
    with pytest.raises(ValueError, match="DETFORGE_MEMORY_FORMAT"):
        choose_channels_last(tiny(), (2, 3, 64, 64), mode="fast")


def test_switching_formats_keeps_the_outputs(tiny):
    model = tiny().eval()
    images = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        a = model(images)
        set_channels_last(model, False)
        assert not model.channels_last
        assert model.features.body.conv1[0].weight.is_contiguous()
        b = model(images)
    for key in ("cls_logits", "box_reg", "centerness"):
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
