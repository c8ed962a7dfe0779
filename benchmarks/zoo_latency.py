"""torchvision's COCO detectors imported into detforge against the torchvision originals: same weights, same
images, identical detections, and each library's end-to-end inference time as users call it.

Each model named in torchvision's builder names (``detforge models --weights``) is built by torchvision with
random weights (no download: ``weights=None``) and a fixed seed, its class layers given scores that pass the
model's threshold on many locations (as a trained model's do on a busy street scene; random class layers
would leave post-processing idle), saved, and imported with ``create_model(name, weights=FILE)``. Both then
take the same list of decoded images (float in [0, 1], 480x640): torchvision ``model(images)`` (its
transform, network, per-image post-processing), detforge ``model.predict(images)`` (the same pre-processing,
network, one batched post-processing). Timed one call each in turn, the order reversed every other round
(``timing.interleaved_times``), medians over ``--repeats`` rounds, batch 1 and 4; the torchvision
pre-processing sizes: 800 px short side for the R50 models, 320 px for the mobile ones.

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
    "roi_heads.box_predictor.cls_score.bias": 0.0,
}


def torchvision_models() -> list[str]:
    return [name for name, tag in list_weights() if get_weights(name, tag).source == "torchvision"]


def build_pair(name: str, tmp: Path) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(torchvision's model, detforge's import of it), both in eval mode on the same random weights."""
    torch.manual_seed(0)
    reference = getattr(torchvision.models.detection, name)(weights=None, weights_backbone=None).eval()
    with torch.no_grad():
        for key, param in reference.named_parameters():
            if key in BUSY_BIASES:
                param.fill_(BUSY_BIASES[key])
            elif key.startswith("roi_heads.box_predictor.cls_score.weight"):
                param.normal_(0, 0.05)  # Faster R-CNN: softmax scores spread over the classes
            elif key.startswith("head.classification_head.module_list") and key.endswith("1.bias"):
                param.normal_(0, 1.0)  # SSDlite: softmax scores spread over the classes
    path = tmp / f"{name}.pth"
    torch.save(reference.state_dict(), path)
    ours = create_model(name, weights=str(path)).eval()
    return reference, ours


def same_detections(expected: list[dict], found: list[dict]) -> tuple[bool, float]:
    """Whether the detections agree (same count, labels, order) and the largest box difference in pixels."""
    worst = 0.0
    for exp, det in zip(expected, found, strict=True):
        if len(exp["boxes"]) != len(det["boxes"]) or not torch.equal(exp["labels"], det["labels"] + 1):
            return False, float("inf")
        if len(exp["boxes"]):
            worst = max(worst, float((exp["boxes"] - det["boxes"]).abs().max()))
    return worst <= 1e-3, worst


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
            reference, ours = build_pair(name, Path(tmp))
            for batch in args.batches:
                chunk = images[:batch]
                exact, worst = same_detections(reference(chunk), ours.predict(chunk))
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
                row = (name, batch, tv * 1e3, df * 1e3, df / tv, rounds[q], rounds[-1 - q], exact, worst)
                rows.append(row)
                print(
                    f"{name:<40} batch {batch}: torchvision {row[2]:8.1f} ms, detforge {row[3]:8.1f} ms, "
                    f"ratio {row[4]:.3f} [{row[5]:.3f}-{row[6]:.3f}], identical {exact} (max {worst:.1e} px)",
                    flush=True,
                )
    print("\n| model | batch | torchvision ms | detforge ms | ratio [middle half] | identical |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, batch, tv, df, ratio, lo, hi, exact, worst in rows:
        print(f"| `{name}` | {batch} | {tv:.0f} | {df:.0f} | {ratio:.3f} [{lo:.3f}-{hi:.3f}] | {exact} ({worst:.0e} px) |")


if __name__ == "__main__":
    main()
