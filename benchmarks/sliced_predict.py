"""detforge's batched sliced inference against SAHI's on the same detforge model, tiles, merge and images.

The detforge model is wrapped as a SAHI ``DetectionModel`` (``perform_inference`` runs the model on one tile,
``postprocess`` as detforge does; no native batching, as a user's custom SAHI model has), and
``sahi.predict.get_sliced_prediction`` runs it with ``batch_size=1`` (SAHI's default: one tile per forward)
and with ``--sahi-batch`` (SAHI >= 0.12's batching, which for a custom model still calls ``perform_inference``
once per tile). detforge runs ``detforge.slicing.sliced_predict`` with ``--batch`` tiles per forward.
Both: tiles of ``--slice`` px with ``--overlap`` (identical windows: detforge's geometry is SAHI's), no
whole-image pass (``perform_standard_pred=False``: SAHI would run the model on the full-size image, detforge
letterboxes it to the input size), class-aware greedy NMS (or NMM) on IoS above ``--match-thresh``, the
SAHI post-process type forced (SAHI switches to NMS/IoU below confidence 0.1 otherwise).

Checks that the detections are the same (count, and boxes / scores / labels within 1e-3 after sorting) and
prints the median time per image of each and the speed ratio, with the CPU and its capability.

Both match at metric >= threshold and NMM grows the kept box member by member, best first, as SAHI's
``_apply_merge``. Differences that can show up: SAHI computes the merge in float64 on Python floats, detforge
in float32 (a metric within ~1e-7 of the threshold); equal scores are ordered by SAHI on the coordinates, by
detforge on the index; an image smaller than the slice is padded by detforge, passed as is by SAHI.

    uv run --group bench python benchmarks/sliced_predict.py --model detforge_n --images 4 --size 1024 \\
        --slice 512 --overlap 0.2 --batch 8 --repeats 3 --threads 2
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from detforge.slicing import sliced_predict
from timing import cpu_summary, median_time  # benchmarks/timing.py, beside this script


def sahi_model(detector: torch.nn.Module):
    """``detector`` (a detforge ``Detector``) as a SAHI ``DetectionModel``."""
    from sahi.models.base import DetectionModel
    from sahi.prediction import ObjectPrediction

    class DetforgeSahiModel(DetectionModel):
        def load_model(self) -> None:  # the model is given
            raise RuntimeError("DetforgeSahiModel needs model=")

        def set_model(self, model, **kwargs) -> None:
            self.model = model

        @torch.no_grad()
        def perform_inference(self, image: np.ndarray) -> None:
            x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div(255)[None]  # [1, C, H, W]
            h, w = x.shape[-2:]
            self._original_predictions = self.model.postprocess(self.model(x), [(h, w)])

        def _create_object_prediction_list_from_original_predictions(
            self, shift_amount_list=None, full_shape_list=None
        ) -> None:
            out = []
            for i, pred in enumerate(self._original_predictions):
                shift = shift_amount_list[i] if shift_amount_list else [0, 0]
                full = None if full_shape_list is None else full_shape_list[i]
                keep = pred["scores"] > self.confidence_threshold
                out.append(
                    [
                        ObjectPrediction(
                            bbox=box.tolist(), category_id=int(label), score=float(score),
                            shift_amount=shift, full_shape=full,
                        )  # fmt: skip
                        for box, score, label in zip(
                            pred["boxes"][keep], pred["scores"][keep], pred["labels"][keep], strict=True
                        )
                    ]
                )
            self._object_prediction_list_per_image = out

    return DetforgeSahiModel(model=detector, confidence_threshold=0.0, device="cpu", load_at_init=True)


def run_sahi(wrapped, image_hwc: np.ndarray, args, batch_size: int) -> dict[str, torch.Tensor]:
    from sahi.predict import get_sliced_prediction

    result = get_sliced_prediction(
        image_hwc, wrapped, slice_height=args.slice, slice_width=args.slice,
        overlap_height_ratio=args.overlap, overlap_width_ratio=args.overlap, perform_standard_pred=False,
        postprocess_type={"nms": "NMS", "nmm": "GREEDYNMM"}[args.merge], postprocess_match_metric="IOS",
        postprocess_match_threshold=args.match_thresh, postprocess_class_agnostic=False, verbose=0,
        batch_size=batch_size, force_postprocess_type=True,
    )  # fmt: skip
    preds = result.object_prediction_list
    return {
        "boxes": torch.tensor([p.bbox.to_xyxy() for p in preds], dtype=torch.float64).reshape(-1, 4),
        "scores": torch.tensor([p.score.value for p in preds], dtype=torch.float64),
        "labels": torch.tensor([p.category.id for p in preds], dtype=torch.int64),
    }


def same_detections(a: dict, b: dict, atol: float = 1e-3) -> tuple[bool, str]:
    if len(a["scores"]) != len(b["scores"]):
        return False, f"{len(a['scores'])} vs {len(b['scores'])} detections"
    if not len(a["scores"]):
        return True, "0 detections each"

    def rows(d):
        r = torch.cat([d["boxes"].double(), d["scores"].double()[:, None], d["labels"].double()[:, None]], 1)
        return r[np.lexsort(r.numpy().T[::-1].copy())]

    diff = float((rows(a) - rows(b)).abs().max())
    return diff <= atol, f"{len(a['scores'])} detections each, largest difference {diff:.2e}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="detforge_n", help="registered model (random weights) ...")
    parser.add_argument("--ckpt", default=None, help="... or an ObjectDetector checkpoint")
    parser.add_argument("--num-classes", type=int, default=3)
    parser.add_argument("--score-thresh", type=float, default=None, help="the model's (default: its own)")
    parser.add_argument("--images", type=int, default=4, help="synthetic images of --size px")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--slice", type=int, default=512)
    parser.add_argument("--overlap", type=float, default=0.2)
    parser.add_argument("--batch", type=int, default=8, help="detforge tiles per forward")
    parser.add_argument("--sahi-batch", type=int, default=8, help="SAHI batch_size for its second run")
    parser.add_argument("--merge", choices=("nms", "nmm"), default="nms")
    parser.add_argument("--match-thresh", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.ckpt:
        from detforge.engine.validate import load_detector

        detector = load_detector(args.ckpt, "cpu").model
    else:
        from detforge.models.registry import create_model

        detector = create_model(args.model, num_classes=args.num_classes)
    detector.eval()
    if args.score_thresh is not None:
        detector.score_thresh = args.score_thresh
    from detforge.data.synthetic import SyntheticShapes

    data = SyntheticShapes(args.images, args.size, num_classes=min(args.num_classes, 8))
    images = [data[i][0] for i in range(len(data))]  # [C, H, W] float in [0, 1] (uint8 / 255)
    hwc = [(image * 255).round().byte().permute(1, 2, 0).numpy() for image in images]
    wrapped = sahi_model(detector)
    print(cpu_summary())
    print(
        f"{type(detector).__name__} ({args.ckpt or args.model}), {len(images)} images {args.size} px, slice "
        f"{args.slice}, overlap {args.overlap}, merge {args.merge} on IoS > {args.match_thresh}"
    )

    def ours(image):
        return sliced_predict(
            detector, image, args.slice, args.overlap, batch_size=args.batch, merge=args.merge,
            match_metric="ios", match_thresh=args.match_thresh,
        )[0]  # fmt: skip

    all_same = True
    for i, (image, array) in enumerate(zip(images, hwc, strict=True)):
        ok, why = same_detections(ours(image), run_sahi(wrapped, array, args, 1))
        all_same &= ok
        print(f"image {i}: {'identical' if ok else 'DIFFERENT'} ({why})")
    t_ours = median_time(lambda: [ours(im) for im in images], args.repeats) / len(images)
    t_sahi = median_time(lambda: [run_sahi(wrapped, a, args, 1) for a in hwc], args.repeats) / len(images)
    t_sahi_b = median_time(
        lambda: [run_sahi(wrapped, a, args, args.sahi_batch) for a in hwc], args.repeats
    ) / len(images)
    print(f"detforge sliced_predict (batch {args.batch}): {t_ours * 1e3:9.1f} ms / image")
    print(f"SAHI get_sliced_prediction (batch 1):       {t_sahi * 1e3:9.1f} ms / image  ({t_sahi / t_ours:.2f}x)")
    print(
        f"SAHI get_sliced_prediction (batch {args.sahi_batch}):       {t_sahi_b * 1e3:9.1f} ms / image  "
        f"({t_sahi_b / t_ours:.2f}x)"
    )
    print("detections identical on every image" if all_same else "detections DIFFER (see above)")
    return 0 if all_same else 1


if __name__ == "__main__":
    raise SystemExit(main())
