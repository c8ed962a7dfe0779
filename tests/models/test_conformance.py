"""The model protocol, checked on every registered model (``list_models()``) with no per-model code.

Each model is built with its builder's defaults and run at a small non-square input on the edge-case
targets: no boxes, one box, boxes on the image border, different box counts per image. A model registered in
the zoo is covered here without new test code.
"""

from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from detforge.engine.memory_format import _tensors as float_tensors  # floating tensors of a nested output
from detforge.export import check_onnx, export_onnx
from detforge.models.base import Detector
from detforge.models.fold_batchnorm import fold_batchnorm
from detforge.models.registry import list_models

sys.path.insert(0, str(Path(__file__).parent))  # conformance_cases, importable by DDP worker processes

from conformance_cases import (  # noqa: E402
    H,
    W,
    build,
    ddp_worker,
    edge_case_batches,
    free_port,
    halves,
    rank_losses,
)


def _light_models() -> list[str]:
    """Every registered model but the imports of published checkpoints above 15 M parameters (torchvision's
    ResNet-50 and MobileNetV3 FPN detectors): their classes are checked here through the small members of the
    same families (``detforge_n``, ``retinanet_n``, ``faster_rcnn_n``), their own networks by their exactness
    tests against torchvision (``tests/models/test_torchvision_*.py``), and a 2-core CI has no room for seven
    ResNet-50s through every case. ``DETFORGE_HEAVY_CONFORMANCE=1`` runs them too."""
    from detforge.models.weights import get_weights, list_weights

    if os.environ.get("DETFORGE_HEAVY_CONFORMANCE") == "1":
        return list_models()
    heavy = {
        name for name, tag in list_weights() if (get_weights(name, tag).num_params or 0) > 15_000_000
    }
    return [name for name in list_models() if name not in heavy]


MODELS = _light_models()
_CACHE: dict[str, Detector] = {}


def model_named(name: str) -> Detector:
    if name not in _CACHE:
        _CACHE[name] = build(name)
    return _CACHE[name]


def _images(model: Detector, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(2, model.in_chans, H, W, generator=g)


def _structure(value):
    """Keys, shapes and dtypes of a (nested) output, for comparing train and eval mode."""
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), value.dtype)
    if isinstance(value, dict):
        return {k: _structure(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_structure(v) for v in value]
    return value


def test_every_registered_model_is_a_detector():
    assert MODELS, "no registered models"
    for name in MODELS:
        model = model_named(name)
        assert isinstance(model, Detector), f"{name} does not subclass detforge.models.base.Detector"
        assert model.num_classes >= 1 and model.in_chans in (1, 3)
        assert len(model.default_input_size) == 2


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("case", ["no_boxes", "one_box", "border_boxes", "different_counts"])
def test_loss_and_backward_are_finite(name, case):
    model = model_named(name)
    targets = edge_case_batches(model.num_classes)[case]
    model.train()
    try:
        outputs, losses = model.forward_loss(_images(model), targets)
        assert "loss" in losses and losses["loss"].ndim == 0
        assert torch.isfinite(losses["loss"]), f"{name} / {case}: loss {losses['loss']}"
        for key, value in losses.items():
            assert torch.isfinite(torch.as_tensor(value)).all(), f"{name} / {case}: {key} = {value}"
        model.zero_grad(set_to_none=True)
        losses["loss"].backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads, f"{name} / {case}: no parameter received a gradient"
        assert all(torch.isfinite(g).all() for g in grads), f"{name} / {case}: non-finite gradient"
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()


@pytest.mark.parametrize("name", MODELS)
def test_trains_and_detects_under_cpu_bfloat16_autocast(name):
    """The training step as ``CpuPrecisionChoice`` may run it (bfloat16 autocast, several threads: Faster
    R-CNN's threaded RoIAlign once raised "not implemented for 'BFloat16'"), and detections under autocast.
    A model of its own: training mode moves BatchNorm statistics, which the shared models' ONNX checks see."""
    model = build(name)
    targets = edge_case_batches(model.num_classes)["different_counts"]
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    model.train()
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outputs, losses = model.forward_loss(_images(model), targets)
        assert torch.isfinite(losses["loss"]), f"{name}: loss {losses['loss']} under bfloat16 autocast"
        losses["loss"].backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        model.eval()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            detections = model.postprocess(model(_images(model)), [(H, W)] * 2)
        assert len(detections) == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("name", MODELS)
def test_outputs_do_not_depend_on_mode(name):
    """Train and eval mode return the same outputs (keys, shapes, dtypes), and both give loss and
    detections from one forward."""
    model = model_named(name)
    images = _images(model)
    targets = edge_case_batches(model.num_classes)["different_counts"]
    structures = {}
    for mode in ("train", "eval"):
        model.train(mode == "train")
        with torch.no_grad():
            outputs, losses = model.forward_loss(images, targets)
            detections = model.postprocess(outputs, [(H, W)] * 2)
        structures[mode] = _structure(outputs)
        assert set(losses) >= {"loss"} and len(detections) == 2
    model.eval()
    assert structures["train"] == structures["eval"]


@pytest.mark.parametrize("name", MODELS)
def test_losses_do_not_depend_on_detections(name):
    """``forward_loss(..., detections=False)`` (the training step) may skip what only detections need, but
    gives the same losses (eval mode: deterministic sampling)."""
    model = model_named(name).eval()
    images = _images(model)
    targets = edge_case_batches(model.num_classes)["different_counts"]
    with torch.no_grad():
        _, full = model.forward_loss(images, targets)
        _, lean = model.forward_loss(images, targets, detections=False)
    assert set(lean) == set(full)
    for key in full:
        torch.testing.assert_close(lean[key], full[key], msg=f"{name}: {key} changed with detections=False")


@pytest.mark.parametrize("name", MODELS)
def test_folded_batchnorm_gives_the_eval_outputs(name):
    """``fold_batchnorm`` (what predict and bench run) changes no eval output beyond float rounding, with
    BatchNorm statistics and affines away from the identity so that a wrong fold shows."""
    model = copy.deepcopy(model_named(name)).eval()
    g = torch.Generator().manual_seed(3)
    for bn in (m for m in model.modules() if type(m) is torch.nn.BatchNorm2d):
        c = bn.num_features
        bn.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
        bn.running_var.copy_(0.5 + torch.rand(c, generator=g))
        if bn.affine:
            bn.weight.data.copy_(0.5 + torch.rand(c, generator=g))
            bn.bias.data.copy_(torch.randn(c, generator=g) * 0.1)
    images = _images(model)
    before = sum(type(m) is torch.nn.BatchNorm2d for m in model.modules())
    with torch.no_grad():
        expected = float_tensors(model(images))
        folded = fold_batchnorm(model)
        got = float_tensors(model(images))
    assert before - sum(type(m) is torch.nn.BatchNorm2d for m in model.modules()) == folded
    assert len(got) == len(expected)
    for e, o in zip(expected, got):
        scale = float(e.abs().max()) if e.numel() else 1.0
        torch.testing.assert_close(
            o, e, rtol=1e-4, atol=1e-4 * max(scale, 1.0), msg=f"{name}: folded output differs"
        )


@pytest.mark.parametrize("name", MODELS)
def test_postprocess_contract(name):
    model = model_named(name)
    settings = model.postprocess_settings
    model.score_thresh = 0.0  # random weights: keep every candidate, so the limits are exercised
    model.max_detections_per_image = 7
    sizes = [(H, W), (H - 16, W - 32)]  # the second image is padded in the batch
    try:
        with torch.no_grad():
            detections = model.postprocess(model(_images(model)), sizes)
    finally:
        model.postprocess_settings = settings
    assert len(detections) == 2
    for det, (h, w) in zip(detections, sizes):
        boxes, scores, labels = det["boxes"], det["scores"], det["labels"]
        k = boxes.shape[0]
        assert boxes.shape == (k, 4) and scores.shape == (k,) and labels.shape == (k,)
        assert boxes.dtype == torch.float32 and scores.dtype == torch.float32 and labels.dtype == torch.int64
        assert k <= 7
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
        assert (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all(), f"{name}: boxes not clipped to {(h, w)}"
        assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
        assert ((labels >= 0) & (labels < model.num_classes)).all()
        assert (scores[:-1] >= scores[1:]).all(), f"{name}: detections not best first"
    # the detections are what every tracker takes: the same frame twice continues each track it starts
    from detforge.tracking import create_tracker

    tracker = create_tracker(
        "bytetrack", high_conf_det_threshold=0.0, track_activation_threshold=0.0, minimum_score=0.0
    )
    tracker.update(detections[0])
    tracked = tracker.update(detections[0])
    ids, boxes = tracked["track_ids"], detections[0]["boxes"]
    with_area = int(((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).sum())  # a point overlaps nothing
    assert len(ids) == with_area and ids.unique().numel() == len(ids), f"{name}: its detections do not track"


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("with_nms", [False, True], ids=["raw", "nms"])
def test_onnx_round_trip(name, with_nms, tmp_path):
    model = model_named(name)
    images = _images(model)
    path = export_onnx(model, tmp_path / f"{name}.onnx", example_input=images, with_nms=with_nms)
    assert check_onnx(model, path, images) < 1e-4


@pytest.mark.slow
def test_loss_normalisation_is_over_ranks(tmp_path):
    """Each rank divides by the positives averaged over ranks, so the mean of the ranks' losses equals the
    loss of one process that sees both ranks' images: (S0 / N + S1 / N) / 2 == (S0 + S1) / (N0 + N1) with
    N = (N0 + N1) / 2. A per-rank normaliser breaks the equality whenever the ranks' counts differ."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(ddp_worker, args=(free_port(), str(tmp_path), MODELS), nprocs=2, join=True)
    ranks = [json.loads(Path(tmp_path, f"rank{r}.json").read_text()) for r in range(2)]
    rank0, rank1 = halves()
    single = rank_losses(rank0 + rank1, MODELS)
    failures = []
    for name in MODELS:
        for key, value in single[name].items():
            mean = (ranks[0][name][key] + ranks[1][name][key]) / 2
            if not np.isclose(mean, value, rtol=1e-4, atol=1e-6):
                failures.append(f"{name}.{key}: mean over ranks {mean:.6f} != one process {value:.6f}")
    assert not failures, "\n".join(failures)
