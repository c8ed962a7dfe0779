"""Per-frame latency, file sizes and Phantom's sparse-compute profile of the edge detectors.

For Nexus (320 x 320), NightVision-edge (320 x 320) and Phantom (128 x 128): median per-frame latency over
``--frames`` frames after ``--warmup`` frames, on 1 and 2 threads, in PyTorch eager and in onnxruntime
(float32 and static INT8). The peer, measured in the same run, is onnxruntime on a plain 100K-parameter conv
net at 128 x 128 (the floor of an onnxruntime call); every latency is also printed as a ratio to it.

Phantom's video path (onnxruntime float32 and INT8, 2 threads, network + decode, no tracking): a cold frame
(full network), and per sequence the mean time per frame and the fraction of full-frame network work per
frame: the 6-object ``SyntheticShapes(mode="sequence")`` (when available), one small moving square, and a
static scene.

Run: ``uv run python benchmarks/edge_latency.py [--frames 200] [--warmup 20] [--models phantom ...]``.
Always exits 0.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from detforge.export import quantize_int8
from detforge.models import create_model
from detforge.models.edge.common import count_parameters
from detforge.models.edge.onnx import export_edge_onnx, ort_network, ort_session
from detforge.models.edge.phantom_video import PhantomVideo


def _median_ms(fn, frames: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(frames):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def _peer_net() -> nn.Module:
    """A plain conv net of about 100K parameters (the onnxruntime floor the issue quotes)."""
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, 2, 1), nn.ReLU(), nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(),
        nn.Conv2d(64, 128, 3, 1, 1), nn.ReLU(), nn.Conv2d(128, 5, 1),
    ).eval()  # fmt: skip


def _inputs(model, h: int, w: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One frame's graph inputs (``model.export_inputs``: ``images``)."""
    x = torch.from_numpy(rng.uniform(0, 1, (1, model.in_chans, h, w)).astype(np.float32))
    return [v.numpy() for v in model.export_inputs(x).values()]


def _square_sequence(n: int, size: int = 128) -> list[np.ndarray]:
    """One 16 x 16 square moving 2 pixels a frame over a fixed textured background."""
    rng = np.random.default_rng(0)
    background = rng.uniform(0.2, 0.4, (3, size, size)).astype(np.float32)
    frames = []
    for i in range(n):
        f = background.copy()
        x = 10 + (2 * i) % (size - 30)
        f[:, 50:66, x : x + 16] = 0.9
        frames.append(f)
    return frames


def _sequences(n: int, size: int = 128) -> list[tuple[str, list[np.ndarray]]]:
    """(label, frames [3, H, W]) for the synthetic moving-objects sequence (when the data set is available),
    one moving square, and a static scene."""
    out = []
    try:
        from detforge.data.synthetic import SyntheticShapes

        data = SyntheticShapes(num_images=n, image_size=size, num_classes=1, seed=0, mode="sequence")
        out.append(
            ("SyntheticShapes(mode='sequence') moving objects", [data[i][0].numpy() for i in range(n)])
        )
    except Exception as err:  # the data set is someone else's module; measure the rest rather than fail
        print(f"SyntheticShapes sequence unavailable: {type(err).__name__}: {err}")
    square = _square_sequence(n, size)
    out.append(("one moving 16x16 square", square))
    out.append(("static scene", [square[0]] * n))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument(
        "--models",
        nargs="+",
        default=["phantom", "nexus", "nightvision_edge"],
        choices=["phantom", "nexus", "nightvision_edge"],
        help="models to measure (Phantom's video section needs phantom)",
    )
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    out_dir = Path(tempfile.mkdtemp(prefix="edge_latency_"))

    # ---- peer: onnxruntime floor ------------------------------------------------------------------------
    peer = _peer_net()
    peer_path = out_dir / "peer.onnx"
    torch.onnx.export(peer, (torch.rand(1, 3, 128, 128),), str(peer_path), dynamo=False, input_names=["x"])
    peer_x = rng.uniform(0, 1, (1, 3, 128, 128)).astype(np.float32)
    peer_ms = {}
    for threads in (1, 2):
        session = ort_session(peer_path, threads)
        peer_ms[threads] = _median_ms(lambda s=session: s.run(None, {"x": peer_x}), args.frames, args.warmup)
    print(f"peer: onnxruntime conv net, {count_parameters(peer)} parameters, 128x128: "
          f"{peer_ms[1]:.3f} ms (1 thread), {peer_ms[2]:.3f} ms (2 threads)")  # fmt: skip

    # ---- each model -------------------------------------------------------------------------------------
    print(
        f"\n{'model':<18}{'params':>8}{'input':>9}{'backend':>14}{'thr':>4}{'ms':>9}{'x peer':>8}{'file KB':>9}"
    )
    sessions = {}
    for name in args.models:
        model = create_model(name).eval()
        h, w = model.default_input_size
        fp32 = export_edge_onnx(model, out_dir / f"{name}.onnx")
        calibration = [_inputs(model, h, w, rng) for _ in range(8)]
        int8 = quantize_int8(fp32, out_dir / f"{name}.int8.onnx", calibration)
        feeds_np = _inputs(model, h, w, rng)
        x = torch.from_numpy(feeds_np[0])
        rows = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            with torch.inference_mode():
                ms = _median_ms(lambda m=model, x=x: m(x), args.frames, args.warmup)
            rows.append(("torch eager", threads, ms, None))
            for label, path in (("ort fp32", fp32), ("ort int8", int8)):
                session = ort_session(path, threads)
                sessions[(name, label, threads)] = session
                feeds = {i.name: a for i, a in zip(session.get_inputs(), feeds_np, strict=True)}
                ms = _median_ms(lambda s=session, f=feeds: s.run(None, f), args.frames, args.warmup)
                rows.append((label, threads, ms, path.stat().st_size / 1024))
        for label, threads, ms, kb in rows:
            ratio = ms / peer_ms[threads]
            size = f"{kb:9.0f}" if kb is not None else f"{'':>9}"
            print(
                f"{name:<18}{count_parameters(model):>8}{f'{h}x{w}':>9}{label:>14}{threads:>4}{ms:9.3f}{ratio:8.1f}{size}"
            )

        # INT8 agreement with float32 on fresh inputs (untrained weights: an output-level check, not mAP)
        s32, s8 = sessions[(name, "ort fp32", 2)], sessions[(name, "ort int8", 2)]
        probe = _inputs(model, h, w, rng)
        feeds = {i.name: a for i, a in zip(s32.get_inputs(), probe, strict=True)}
        a = np.concatenate([o.ravel() for o in s32.run(None, feeds)])
        b = np.concatenate([o.ravel() for o in s8.run(None, feeds)])
        corr = float(np.corrcoef(a, b)[0, 1])
        print(
            f"{name:<18}int8 vs fp32, all outputs: correlation {corr:.4f}, max |diff| {np.abs(a - b).max():.4f}"
        )

    # ---- Phantom video: cold frame, mostly static sequence, compute profile ------------------------------
    phantom = create_model("phantom").eval()
    for precision, key in (("float32", "ort fp32"), ("INT8", "ort int8")) if "phantom" in args.models else ():
        print(
            f"\nPhantom video (onnxruntime {precision}, 2 threads, network + decode per frame, no tracking)"
        )
        network = ort_network(sessions[("phantom", key, 2)])

        def runner(refresh_interval: int, network=network) -> PhantomVideo:
            return PhantomVideo(network, memory=None, refresh_interval=refresh_interval)

        frame = rng.uniform(0, 1, (3, 128, 128)).astype(np.float32)
        cold = runner(1)  # every frame is a full (cold) frame
        cold_ms = _median_ms(lambda cold=cold, frame=frame: cold.infer(frame), args.frames, args.warmup)
        print(
            f"cold frame (full network) {precision}: {cold_ms:.3f} ms median = {cold_ms / peer_ms[2]:.2f}x peer"
        )

        for label, frames in _sequences(60):
            video = runner(phantom.backbone_refresh_interval)
            times = []
            for f in frames:
                start = time.perf_counter()
                video.infer(f)
                times.append(1000 * (time.perf_counter() - start))
            p = video.profile
            print(f"{label} (60 frames): mean {statistics.mean(times):.3f} ms/frame, median "
                  f"{statistics.median(times):.3f} (median = {statistics.median(times) / cold_ms:.2f} of a cold frame); "
                  f"work fraction frame 1 {p.fractions[0]:.0%}, frame 5 {p.fractions[4]:.0%}, frame 30 "
                  f"{p.fractions[29]:.0%}, frame 31 {p.fractions[30]:.0%}, mean {statistics.mean(p.fractions):.0%};"
                  f" event pixels {statistics.mean(p.event_fractions[1:]):.1%}; modes "
                  f"{ {m: p.modes.count(m) for m in ('full', 'sparse', 'skip')} }; network calls "
                  f"{sum(p.calls)}")  # fmt: skip
    print(f"\nfiles in {out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
