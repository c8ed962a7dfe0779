import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detforge.data.datamodule import DetectionDataModule
from detforge.data.synthetic import SyntheticShapes
from detforge.data.writers import write_coco
from detforge.engine import validate as validate_mod
from detforge.engine.validate import load_detector, validate_checkpoint
from detforge.models.detector import ObjectDetector


@pytest.fixture(scope="module")
def coco_dir(tmp_path_factory):
    """A COCO data set on disk whose images (80 x 100) differ from the network input (64)."""
    root = tmp_path_factory.mktemp("coco")
    ann = write_coco(SyntheticShapes(12, (80, 100), num_classes=3, seed=3), root, split="val")
    return root, ann


def test_load_detector_weights_only(tiny_checkpoint):
    model = load_detector(tiny_checkpoint, "cpu")
    assert isinstance(model, ObjectDetector) and not model.training and model.hparams.imgsz == 64
    with pytest.raises(FileNotFoundError):
        load_detector(tiny_checkpoint.parent / "missing.ckpt")


def test_metric_equals_pycocotools_on_written_results(
    tiny_checkpoint, coco_dir, tmp_path, monkeypatch, capsys
):
    root, ann = coco_dir
    spec = f"coco:{ann}:{root / 'val'}"
    # Predictions: the ground truth itself (network-input pixels), jittered and with varied scores, so the
    # mAP is far from 0 and from 1 and every box goes through the rescaling to the original image size.
    dm = DetectionDataModule(data=spec, imgsz=64, batch_size=5, num_workers=0)
    dm.setup("validate")
    queue = [t for _, targets in dm.val_dataloader() for t in targets]
    rng = np.random.default_rng(0)
    model = load_detector(tiny_checkpoint, "cpu")

    def fake_postprocess(outputs, image_sizes):
        preds = []
        for _ in image_sizes:
            t = queue.pop(0)
            queue.append(t)  # around again for the report's gallery, which predicts its images once more
            n = len(t["boxes"])
            jitter = torch.as_tensor(rng.normal(0, 2.0, (n, 4)), dtype=torch.float32)
            preds.append(
                {
                    "boxes": t["boxes"] + jitter,
                    "scores": torch.as_tensor(rng.uniform(0.1, 1.0, n), dtype=torch.float32),
                    "labels": torch.where(
                        torch.as_tensor(rng.uniform(size=n) < 0.2), (t["labels"] + 1) % 3, t["labels"]
                    ),
                }
            )
        return preds

    model.model.postprocess = fake_postprocess
    monkeypatch.setattr(validate_mod, "load_detector", lambda ckpt, device=None: model)
    stats = validate_checkpoint(tiny_checkpoint, spec, imgsz=64, batch=5, device="cpu", out_dir=tmp_path)
    assert "Average Precision" in capsys.readouterr().out

    gt = COCO(str(ann))
    results = json.loads(Path(stats["results_json"]).read_text())
    assert {r["category_id"] for r in results} <= set(gt.getCatIds())
    ev = COCOeval(gt, gt.loadRes(stats["results_json"]), "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert 0.1 < ev.stats[0] < 0.95
    for i, key in enumerate(["map", "map_50", "map_75"]):
        assert float(stats[key]) == pytest.approx(ev.stats[i], abs=1e-6), key


def test_class_count_mismatch_is_an_error(tiny_checkpoint, tmp_path):
    with pytest.raises(ValueError, match="classes"):
        validate_checkpoint(tiny_checkpoint, "synthetic:8", imgsz=64, device="cpu", out_dir=tmp_path)


def test_run_folder_data_settings_are_reused(tiny_checkpoint, tmp_path, monkeypatch):
    """A checkpoint beside a run's config.yaml is evaluated on the run's data with the run's data set options;
    another data spec gets no options unless given."""
    import shutil

    import yaml

    run = tmp_path / "run"
    run.mkdir()
    ckpt = shutil.copy(tiny_checkpoint, run / "best.ckpt")
    options = {"min_size": 16, "max_size": 0.75, "num_classes": 3}
    (run / "config.yaml").write_text(yaml.safe_dump({"data": {"data": "synthetic:8", "dataset_kwargs": options}}))
    seen = []

    class Recorder(DetectionDataModule):
        def __init__(self, **kwargs):
            seen.append((kwargs["data"], kwargs["dataset_kwargs"]))
            super().__init__(**kwargs)

    monkeypatch.setattr("detforge.data.datamodule.DetectionDataModule", Recorder)
    stats = validate_checkpoint(ckpt, imgsz=64, device="cpu", verbose=False)
    assert seen[-1] == ("synthetic:8", options) and 0.0 <= float(stats["map"]) <= 1.0
    validate_checkpoint(ckpt, "synthetic:4", imgsz=64, device="cpu", verbose=False, dataset_kwargs={"num_classes": 3})
    assert seen[-1] == ("synthetic:4", {"num_classes": 3})
    with pytest.raises(ValueError, match="no config.yaml"):
        validate_checkpoint(tiny_checkpoint, imgsz=64, device="cpu")


def test_out_folder_gets_f1_curve_and_confusion_matrix(tiny_checkpoint, tmp_path, capsys):
    """``--out DIR``: the run folder's two summary plots and report.html, from the same DetectionMAP.summary;
    without it they go to the checkpoint folder's ``val_report/``, never over a run's own."""
    import shutil

    kwargs = dict(imgsz=64, device="cpu", dataset_kwargs={"num_classes": 3})
    stats = validate_checkpoint(tiny_checkpoint, "synthetic:4", out_dir=tmp_path / "val", **kwargs)
    names = ("confusion_matrix.png", "f1_curve.png", "report.html")
    assert stats["plots"] == [str(tmp_path / "val" / n) for n in names]
    out = capsys.readouterr().out
    for path in stats["plots"]:
        assert Path(path).is_file() and f"written: {path}" in out
    summary = stats["detection_summary"]
    dm = DetectionDataModule(data="synthetic:4", imgsz=64, batch_size=8, dataset_kwargs={"num_classes": 3})
    dm.setup("validate")
    objects = torch.cat([t["labels"] for _, targets in dm.val_dataloader() for t in targets])
    rows = summary.confusion_matrix[:3].sum(axis=1)  # every object: matched or missed
    assert summary.confusion_matrix.shape == (4, 4)
    assert rows.tolist() == torch.bincount(objects, minlength=3).tolist()
    assert summary.f1.f1.shape == (3, 1001)

    ckpt = shutil.copy(tiny_checkpoint, tmp_path / "best.ckpt")
    stats = validate_checkpoint(ckpt, "synthetic:4", verbose=False, **kwargs)
    assert stats["plots"] == [str(tmp_path / "val_report" / n) for n in names]  # beside the run's, not over
    assert not (tmp_path / "confusion_matrix.png").exists() and not (tmp_path / "report.html").exists()
