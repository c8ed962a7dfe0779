"""The standard fine-tune, offline: a model imported from a torchvision checkpoint (here torchvision's
``ssdlite320_mobilenet_v3_large`` with random weights, the smallest of the imports) gets new classes, keeps
everything else, and its validation mAP (AP50 on other images) rises within 100 steps on synthetic shapes, from the
random reference's chance level (no COCO features to start from, so the rise is small and slow)."""

from __future__ import annotations

import torch
import torchvision

from detforge.data.synthetic import SyntheticShapes
from detforge.metrics import DetectionMAP
from detforge.models.registry import create_model

SIZE, CLASSES = 128, 2


def _data(n: int, seed: int):
    data = SyntheticShapes(n, (SIZE, SIZE), num_classes=CLASSES, seed=seed)
    return [data[i] for i in range(n)]


def _map(model, samples) -> float:
    metric = DetectionMAP()
    model.eval()
    with torch.no_grad():
        images = torch.stack([image for image, _ in samples])
        found = model.postprocess(model(images), [(SIZE, SIZE)] * len(samples))
    metric.update(found, [{"boxes": t["boxes"], "labels": t["labels"]} for _, t in samples])
    return float(metric.compute()["map_50"])


def test_a_torchvision_import_fine_tunes_on_new_classes(tmp_path):
    torch.manual_seed(0)
    reference = torchvision.models.detection.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None)
    torch.save(reference.state_dict(), tmp_path / "ssdlite.pth")
    model = create_model("ssdlite320_mobilenet_v3_large", weights=str(tmp_path / "ssdlite.pth"), num_classes=CLASSES)
    assert model.num_classes == CLASSES and model.reinitialized  # the class layers start anew
    kept = [k for k in model.state_dict() if k not in model.reinitialized and not k.endswith("batches_tracked")]
    source = {k: v for k, v in reference.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert len(kept) == len(source) - len(model.reinitialized)  # every other tensor came from the file
    assert any(k.startswith("backbone.") for k in kept) and all("cls" in k for k in model.reinitialized)
    # A random reference's BatchNorm statistics describe nothing (a real checkpoint's describe COCO): let them
    # follow the new data within the few steps here instead of torchvision's slow momentum of 0.03.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = 0.3
    train, val = _data(32, seed=0), _data(16, seed=1)
    before = _map(model, val)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    for step in range(100):
        batch = [train[(step * 8 + i) % len(train)] for i in range(8)]
        images = torch.stack([image for image, _ in batch])
        _, losses = model.forward_loss(images, [target for _, target in batch], detections=False)
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
    after = _map(model, val)
    assert after > 2 * before and after > before + 0.015, (before, after)  # measured: 0.009 -> 0.041
