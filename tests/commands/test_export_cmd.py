import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from detforge.commands.export import main
from detforge.data.datamodule import detection_collate
from detforge.data.synthetic import SyntheticShapes
from detforge.engine.validate import load_detector
from detforge.models.detector import ObjectDetector

ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    model = ObjectDetector(
        backbone="test_resnet",
        num_classes=3,
        fpn_channels=16,
        head_num_convs=1,
        strides=(8, 16, 32),
        compile_model=False,
        deterministic=False,
        imgsz=64,
        score_thresh=0.0,
    )
    data = DataLoader(SyntheticShapes(4, 64, num_classes=3), batch_size=2, collate_fn=detection_collate)
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(model, data)
    trainer.save_checkpoint(root / "tiny.ckpt")
    return root / "tiny.ckpt"


def _run(path, image):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return session, session.run(None, {name: image.numpy()})


def test_export_raw_heads_match_pytorch(checkpoint, tmp_path):
    out = tmp_path / "raw.onnx"
    assert main(["--ckpt", str(checkpoint), "--out", str(out)]) == 0
    model = load_detector(checkpoint, "cpu")
    image = torch.rand(1, 3, 64, 64)
    _, onnx_outputs = _run(out, image)
    with torch.no_grad():
        torch_outputs = [v for v in model(image).values() if isinstance(v, torch.Tensor)]
    by_shape = {tuple(np.asarray(o).shape): np.asarray(o) for o in onnx_outputs}
    for t in torch_outputs:  # every raw head tensor is a graph output with the same values
        assert tuple(t.shape) in by_shape, (tuple(t.shape), list(by_shape))
        np.testing.assert_allclose(by_shape[tuple(t.shape)], t.numpy(), atol=1e-4, rtol=0)


def test_export_with_nms_matches_predict(checkpoint, tmp_path):
    out = tmp_path / "nms.onnx"
    assert main(["--ckpt", str(checkpoint), "--out", str(out), "--nms", "--dynamic"]) == 0
    model = load_detector(checkpoint, "cpu")
    image = torch.rand(1, 3, 64, 64)
    session, outputs = _run(out, image)
    named = {o.name: np.asarray(v) for o, v in zip(session.get_outputs(), outputs, strict=True)}
    assert {"boxes", "scores", "labels"} <= set(named)
    pred = model.predict(image)[0]
    scores = named["scores"].reshape(-1)
    keep = scores > 0
    k = min(int(keep.sum()), len(pred["scores"]))
    assert k > 0
    np.testing.assert_allclose(np.sort(scores[keep])[::-1][:k], pred["scores"][:k].numpy(), atol=1e-4, rtol=0)
    boxes = named["boxes"].reshape(-1, 4)[keep][:k]
    np.testing.assert_allclose(boxes, pred["boxes"][:k].numpy(), atol=1e-4, rtol=0)
