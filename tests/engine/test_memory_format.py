"""Channels-last or NCHW chosen by measurement, cached per machine / model / shape, state left untouched."""

from __future__ import annotations

import json

import pytest
import torch

from detforge.engine.memory_format import (
    MemoryFormatChoice,
    choose_channels_last,
    choose_head_channels_last,
    choose_memory_formats,
    set_channels_last,
)


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


@pytest.mark.parametrize("rest_channels_last", [True, False])
@pytest.mark.parametrize("head_nchw_faster", [True, False])
def test_the_head_gets_its_own_faster_format(cache, tiny, rest_channels_last, head_nchw_faster):
    model = tiny().train()
    set_channels_last(model, rest_channels_last)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []

    def timer(probe, features, train):
        # the head alone, on the features of one batch in the rest's format, which it converts itself
        assert probe.head is not model.head and len(features) == len(model.strides)
        assert all(f.is_contiguous(memory_format=torch.channels_last) is rest_channels_last for f in features)
        assert all(f.requires_grad for f in features)  # training: its backward reaches the features
        head_format = torch.channels_last if probe.channels_last else torch.contiguous_format
        assert probe.head.cls_logits.weight.is_contiguous(memory_format=head_format)
        calls.append(probe.channels_last)
        return 0.1 if probe.channels_last != head_nchw_faster else 0.2

    choice, why = choose_head_channels_last(model, (2, 3, 64, 64), timer=timer)
    assert choice is (not head_nchw_faster) and why.startswith("head memory format") and "measured" in why
    assert calls == [True, False] + [False, True, True, False] * 2
    assert (
        choose_head_channels_last(model, (2, 3, 64, 64), timer=lambda *_: pytest.fail("again"))[0] is choice
    )
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert model.channels_last_head is rest_channels_last  # the caller switches it


def test_a_head_in_the_other_format_gives_the_same_outputs(tiny):
    model = tiny().eval()
    images = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        a = model(images)
        for rest, head in ((True, False), (False, True)):
            set_channels_last(model, rest, head=head)
            assert model.channels_last is rest and model.channels_last_head is head
            head_format = torch.channels_last if head else torch.contiguous_format
            assert model.head.cls_logits.weight.is_contiguous(memory_format=head_format)
            rest_format = torch.channels_last if rest else torch.contiguous_format
            assert model.features.body.conv1[0].weight.is_contiguous(memory_format=rest_format)
            b = model(images)
            for key in ("cls_logits", "box_reg", "centerness"):
                torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
        set_channels_last(model, True)  # head=None follows the model
        assert model.channels_last_head is True


def test_a_fixed_format_fixes_the_head_and_models_without_one_are_skipped(cache, monkeypatch, tiny):
    monkeypatch.setenv("DETFORGE_MEMORY_FORMAT", "nchw")
    choice, why = choose_head_channels_last(tiny(), (2, 3, 64, 64), timer=lambda *_: pytest.fail("measured"))
    assert choice is False and "fixed" in why
    plain = torch.nn.Conv2d(3, 3, 1)
    plain.channels_last = True
    assert choose_head_channels_last(plain, (2, 3, 64, 64)) == (None, "")


def test_training_start_sets_both_choices(cache, monkeypatch, tiny):
    """MemoryFormatChoice at train start: the model's format, then its head's, from the cached answers."""
    import types

    model = tiny()
    shape = (4, 3, 64, 64)
    from detforge.engine import memory_format

    monkeypatch.setattr(memory_format, "choose_channels_last", lambda m, s, train, mode: (True, "rest"))
    monkeypatch.setattr(memory_format, "choose_head_channels_last", lambda m, s, train, mode: (False, "head"))
    trainer = types.SimpleNamespace(
        world_size=1, datamodule=types.SimpleNamespace(batch_size=shape[0], imgsz=shape[-1])
    )
    callback = MemoryFormatChoice()
    callback.on_train_start(trainer, types.SimpleNamespace(model=model))
    assert (callback.choice, callback.head_choice) == (True, False)
    assert model.channels_last and not model.channels_last_head
    assert model.head.cls_logits.weight.is_contiguous()


def test_inference_format_sets_the_model_and_its_head(cache, monkeypatch, tiny):
    from detforge.engine import memory_format

    seen = []

    def body(m, s, train, mode):
        seen.append(("body", train))
        return False, "rest nchw"

    def head(m, s, train, mode):
        seen.append(("head", train, m.channels_last))  # measured after the rest is switched
        return True, "head channels_last"

    monkeypatch.setattr(memory_format, "choose_channels_last", body)
    monkeypatch.setattr(memory_format, "choose_head_channels_last", head)
    model = tiny().eval()
    assert choose_memory_formats(model, (1, 3, 64, 64)) == ["rest nchw", "head channels_last"]
    assert seen == [("body", False), ("head", False, False)]
    assert not model.channels_last and model.channels_last_head
    assert choose_memory_formats(torch.nn.Conv2d(3, 3, 1), (1, 3, 64, 64)) == []
