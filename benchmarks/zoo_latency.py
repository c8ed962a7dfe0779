"""torchvision's COCO detectors imported into detforge against the torchvision originals: same weights, same
images, identical detections, and each library's end-to-end inference time as users call it.

Each model named in torchvision's builder names (``detforge models --weights``) is built by torchvision with
random weights (no download: ``weights=None``) and a fixed seed, its BatchNorm statistics set from the
images (:func:`calibrate_batchnorm`), its class layers given scores that pass the model's threshold on many
locations (as a trained model's do on a busy street scene; random class layers would leave post-processing
idle), saved, and imported with ``create_model(name, weights=FILE)``. Both then
take the same list of decoded images (float in [0, 1], 480x640): torchvision ``model(images)`` (its
transform, network, per-image post-processing), detforge ``model.predict(images)`` (the same pre-processing,
network, one batched post-processing). Timed one call each in turn, the order reversed every other round
(``timing.interleaved_times``), medians over ``--repeats`` rounds, batch 1 and 4; the torchvision
pre-processing sizes: 800 px short side for the R50 models, 320 px for the mobile ones.

The detections column counts torchvision's detections that detforge also gives (label, score within 1e-4,
box within 0.05 px). With busy class layers thousands of candidates score alike, so a near-tie at a top-k or
NMS boundary, decided by float rounding, may keep another box (one in 100 of FCOS's, one in 300 of
RetinaNet's); the parity tests (``tests/models/test_torchvision_*.py``) check exactness on weights made
without such ties.

Goal (issue): identical detections, detforge at most 1.0x torchvision's time at batch 1 and 0.9x at batch 4.

    uv run python benchmarks/zoo_latency.py [--models NAME ...] [--repeats 5] [--batches 1 4]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent))
from detforge.engine.threads import configure_threads  # noqa: E402
from detforge.models.registry import create_model  # noqa: E402
from detforge.models.weights import get_weights, list_weights  # noqa: E402
from timing import interleaved_times  # noqa: E402

# Class layers that decide how many candidates reach NMS: (parameter name, bias value) per family.
BUSY_BIASES = {
    "head.classification_head.cls_logits.bias": -1.5,  # FCOS, RetinaNet: sigmoid 0.18
}


def torchvision_models() -> list[str]:
    return [name for name, tag in list_weights() if get_weights(name, tag).source == "torchvision"]


# torchvision sets the frozen backbone BatchNorm's eps to 0 for these COCO weights (``overwrite_eps``), and
# detforge's imports do the same: the reference built without weights gets it too
EPS_ZERO = ("fasterrcnn_resnet50_fpn", "retinanet_resnet50_fpn")


def calibrate_batchnorm(model: torch.nn.Module, images: list[torch.Tensor]) -> None:
    """Set the BatchNorm statistics from ``images``: through an untrained network's unit running variances the
    features shrink layer by layer (SSDlite's last maps to 1e-26, denormal floats: slow, and every default box
    then scores the same, so the kept boxes are ties that torchvision and detforge may break differently)."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the calibration call
        norm.train()
    model(images)
    model.eval()
    for norm in norms:
        norm.running_var.clamp_(min=1e-3)  # finite with eps 0 (EPS_ZERO), as trained variances are


def build_pair(name: str, tmp: Path, images: list[torch.Tensor]) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(torchvision's model, detforge's import of it), both in eval mode on the same random weights."""
    torch.manual_seed(0)
    reference = getattr(torchvision.models.detection, name)(weights=None, weights_backbone=None).eval()
    with torch.no_grad():
        calibrate_batchnorm(reference, images)
        if name in EPS_ZERO:
            for norm in reference.backbone.body.modules():
                if isinstance(norm, torch.nn.BatchNorm2d):
                    norm.eps = 0.0
        for key, param in reference.named_parameters():
            if key in BUSY_BIASES:
                param.fill_(BUSY_BIASES[key])
            elif key.startswith("roi_heads.box_predictor.cls_score."):
                # Faster R-CNN: softmax scores spread over the classes, a few above the 0.05 threshold
                param.normal_(0, 0.05 if key.endswith("weight") else 2.0)
            elif key.startswith("head.classification_head.module_list") and key.endswith("1.bias"):
                param.normal_(0, 1.0)  # SSDlite: softmax scores spread over the classes
    path = tmp / f"{name}.pth"
    torch.save(reference.state_dict(), path)
    ours = create_model(name, weights=str(path)).eval()
    return reference, ours


def same_detections(expected: list[dict], found: list[dict]) -> tuple[int, int, int, float]:
    """How far the detections agree: (torchvision's detections, detforge's, those of torchvision's that
    detforge also has, the largest box difference among those in pixels). Found: one of detforge's with the
    label, the score within 1e-4 and the box within 0.05 px (two detections whose scores tie to float rounding
    may come in either order)."""
    total, ours, matched, worst = 0, 0, 0, 0.0
    for exp, det in zip(expected, found, strict=True):
        total, ours = total + len(exp["boxes"]), ours + len(det["boxes"])
        if not len(exp["boxes"]) or not len(det["boxes"]):
            continue
        alike = (exp["labels"][:, None] == det["labels"][None, :] + 1) & (
            (exp["scores"][:, None] - det["scores"][None, :]).abs() <= 1e-4
        )  # [N, M]
        gap = (exp["boxes"][:, None] - det["boxes"][None, :]).abs().amax(-1)  # [N, M] pixels
        best = gap.masked_fill(~alike, float("inf")).amin(1)  # [N]
        hit = best <= 0.05
        matched += int(hit.sum())
        worst = max(worst, float(best[hit].max())) if hit.any() else worst
    return total, ours, matched, worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=None, help="default: every torchvision import")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", type=int, nargs="*", default=[1, 4])
    parser.add_argument("--size", type=int, nargs=2, default=(480, 640), help="decoded image (h, w)")
    args = parser.parse_args()
    configure_threads()
    print(
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"capability {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads"
    )
    gen = torch.Generator().manual_seed(1)
    images = [torch.rand(3, *args.size, generator=gen) for _ in range(max(args.batches))]
    rows = []
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        for name in args.models or torchvision_models():
            reference, ours = build_pair(name, Path(tmp), images)
            for batch in args.batches:
                chunk = images[:batch]
                total, found, matched, worst = same_detections(reference(chunk), ours.predict(chunk))
                times = interleaved_times(
                    {
                        "torchvision": lambda c=chunk, m=reference: m(c),
                        "detforge": lambda c=chunk, m=ours: m.predict(c),
                    },
                    args.repeats,
                )
                tv, df = statistics.median(times["torchvision"]), statistics.median(times["detforge"])
                rounds = sorted(d / t for d, t in zip(times["detforge"], times["torchvision"], strict=True))
                q = len(rounds) // 4
                agree = f"{matched}/{total} of torchvision's found, {found} detforge's (max {worst:.0e} px)"
                row = (name, batch, tv * 1e3, df * 1e3, df / tv, rounds[q], rounds[-1 - q], agree)
                rows.append(row)
                print(
                    f"{name:<40} batch {batch}: torchvision {row[2]:8.1f} ms, detforge {row[3]:8.1f} ms, "
                    f"ratio {row[4]:.3f} [{row[5]:.3f}-{row[6]:.3f}], detections: {agree}",
                    flush=True,
                )
    print("\n| model | batch | torchvision ms | detforge ms | ratio [middle half] | detections |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, batch, tv, df, ratio, lo, hi, agree in rows:
        print(f"| `{name}` | {batch} | {tv:.0f} | {df:.0f} | {ratio:.3f} [{lo:.3f}-{hi:.3f}] | {agree} |")


if __name__ == "__main__":
    main()
