import os

import pytest
import torch

# Two cores are shared by everything on CI; keep torch from oversubscribing them.
torch.set_num_threads(min(2, os.cpu_count() or 1))
# Training runs in tests keep the models' own memory format instead of timing both at every fit
# (tests/engine/test_memory_format.py tests the measurement); subprocesses inherit this.
os.environ.setdefault("DETFORGE_MEMORY_FORMAT", "channels_last")
os.environ.setdefault("DETFORGE_CPU_PRECISION", "fp32")  # results that do not depend on the CPU kind


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _target(boxes, labels):
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64).reshape(-1),
    }


EDGE_CASE_BATCHES = {  # two 64 x 64 images each
    "no boxes": [_target([], []), _target([], [])],
    "one box": [_target([[10, 12, 40, 50]], [1]), _target([], [])],
    "border box": [_target([[0, 0, 64, 64]], [2]), _target([[55, 0, 64, 7]], [0])],
    "different counts": [
        _target([[4, 4, 20, 30], [30, 30, 60, 62], [5, 40, 25, 60]], [0, 1, 2]),
        _target([[8, 8, 56, 56]], [1]),
    ],
}


@pytest.fixture(params=list(EDGE_CASE_BATCHES))
def edge_case_targets(request):
    """Targets (``boxes`` xyxy pixels, ``labels`` in [0, 3)) of a batch of two 64 x 64 images, once per case
    every detector loss is tested on: no boxes, one box, boxes on the image border, different box counts."""
    return EDGE_CASE_BATCHES[request.param]


TINY_DETECTOR = dict(
    backbone="test_resnet",
    num_classes=3,
    fpn_channels=16,
    head_num_convs=1,
    strides=(8, 16, 32),
    compile_model=False,
    deterministic=False,
    imgsz=64,
)
"""A tiny FCOS ``ObjectDetector``: ``test_resnet`` backbone, 3 classes, strides 8-32, 16 channels, 64 px."""


def _tiny_detector(**overrides):
    from detforge.models.detector import ObjectDetector

    return ObjectDetector(**{**TINY_DETECTOR, **overrides})


@pytest.fixture(scope="session")
def tiny_detector():
    """``tiny_detector(**overrides)``: a new :data:`TINY_DETECTOR` ``ObjectDetector`` with ``overrides``."""
    return _tiny_detector


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """Path of a Lightning checkpoint of a tiny FCOS ``ObjectDetector`` trained for one step, built once per
    session: ``test_resnet`` backbone, 3 classes (circle, rectangle, triangle), strides 8-32, 64 px input,
    ``score_thresh=0`` so even an untrained model returns detections. Tests only read it."""
    import lightning as L
    from torch.utils.data import DataLoader

    from detforge.data.datamodule import detection_collate
    from detforge.data.synthetic import SyntheticShapes

    torch.manual_seed(0)  # the same weights whichever test asks first
    model = _tiny_detector(score_thresh=0.0, class_names=["circle", "rectangle", "triangle"])
    data = DataLoader(SyntheticShapes(4, 64, num_classes=3), batch_size=2, collate_fn=detection_collate)
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(model, data)
    path = tmp_path_factory.mktemp("tiny_checkpoint") / "tiny.ckpt"
    trainer.save_checkpoint(path)
    return path


NAMED_WEIGHTS_CLASSES = ("cat", "dog", "bird")


@pytest.fixture
def named_weights(tmp_path, monkeypatch):
    """Named weights ``test`` of ``detforge_n`` (3 classes, COCO-style category ids 1, 3, 7, torchvision-style
    pre-processing, an SGD fine-tune recipe), whose URL is a ``file://`` path to a file in its own layout
    (every name under ``ref.``; the converter strips it); torch hub's cache in tmp_path. No network.
    Returns (the reference model whose state the file holds, the Weights)."""
    import hashlib

    from detforge.models.preprocess import Preprocess
    from detforge.models.registry import create_model
    from detforge.models.weights import _WEIGHTS, Weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    monkeypatch.delenv("DETFORGE_OFFLINE", raising=False)
    torch.manual_seed(1)
    reference = create_model("detforge_n", num_classes=len(NAMED_WEIGHTS_CLASSES))
    source = tmp_path / "source" / "detforge_n_test-00000000.pth"
    source.parent.mkdir()
    torch.save({"ref." + k: v for k, v in reference.state_dict().items()}, source)
    weights = Weights(
        url=f"file://{source}",
        sha256=hashlib.sha256(source.read_bytes()).hexdigest()[:8],
        class_names=NAMED_WEIGHTS_CLASSES,
        category_ids=(1, 3, 7),
        preprocess=Preprocess(resize="shortest_edge", min_size=96, max_size=160),
        licence="Apache-2.0",
        metrics={"coco/box_ap": 1.0},
        convert=lambda state: {k.removeprefix("ref."): v for k, v in state.items()},
        model_kwargs={"score_thresh": 0.01},
        recipe={"model.lr": 5e-3, "model.optimizer": "sgd"},
        source="test",
    )
    monkeypatch.setitem(_WEIGHTS, "detforge_n", {"test": weights})
    return reference, weights
