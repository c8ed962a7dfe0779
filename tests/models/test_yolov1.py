"""YOLOv1: the loss against a plain per-cell reference of the paper's sum-squared loss, the grid over any
input size, and class-specific confidences at inference."""

import math

import pytest
import torch

from detforge.models.registry import create_model
from detforge.targets import pad_targets


def _iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter + 1e-7)


def _reference(outputs, targets, s, num_boxes, num_classes, h, w, l_coord=5.0, l_noobj=0.5):
    """The paper's loss written cell by cell, box by box; divided by the batch size."""
    total = 0.0
    for b, t in enumerate(targets):
        owner = {}
        for g, (x1, y1, x2, y2) in enumerate(t["boxes"].tolist()):  # later boxes overwrite a cell
            col = min(max(math.floor((x1 + x2) / 2 / (w / s)), 0), s - 1)
            row = min(max(math.floor((y1 + y2) / 2 / (h / s)), 0), s - 1)
            owner[row * s + col] = g
        for cell in range(s * s):
            row, col = divmod(cell, s)
            conf = outputs["confidence"][b, cell].tolist()
            if cell not in owner:
                total += l_noobj * sum(c * c for c in conf)
                continue
            g = owner[cell]
            box = t["boxes"][g].tolist()
            ious = [_iou(outputs["boxes"][b, cell, j].tolist(), box) for j in range(num_boxes)]
            r = max(range(num_boxes), key=lambda j: (ious[j], -j))
            x1, y1, x2, y2 = box
            target = [
                (x1 + x2) / 2 / (w / s) - col,
                (y1 + y2) / 2 / (h / s) - row,
                math.sqrt((x2 - x1) / w),
                math.sqrt((y2 - y1) / h),
            ]
            pred = outputs["box_params"][b, cell, r].tolist()
            total += l_coord * sum((p - q) ** 2 for p, q in zip(pred, target))
            total += (conf[r] - ious[r]) ** 2
            total += l_noobj * sum(c * c for j, c in enumerate(conf) if j != r)
            probs = outputs["class_probs"][b, cell].tolist()
            label = int(t["labels"][g])
            total += sum((p - (1.0 if c == label else 0.0)) ** 2 for c, p in enumerate(probs))
    return total / len(targets)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("yolov1_n", num_classes=3).eval()


@pytest.mark.parametrize("size", [(64, 96), (96, 64)])
def test_loss_matches_per_cell_reference(model, edge_case_targets, size):
    h, w = size
    scale = torch.tensor([w / 64, h / 64, w / 64, h / 64])
    targets = [dict(t, boxes=t["boxes"] * scale) for t in edge_case_targets]
    if len(targets[0]["boxes"]) == 3:  # two centres in one cell: the later box keeps it
        targets[0] = dict(
            boxes=torch.cat([targets[0]["boxes"], targets[0]["boxes"][:1] + 1]),
            labels=torch.cat([targets[0]["labels"], torch.tensor([2])]),
        )
    with torch.no_grad():
        outputs = model(torch.rand(2, 3, h, w))
        losses = model.loss(outputs, targets)
    expected = _reference(outputs, targets, 7, 2, 3, h, w)
    assert losses["loss"].item() == pytest.approx(expected, rel=1e-4, abs=1e-6)
    gt_boxes, _, gt_mask = pad_targets(targets)
    assert losses["num_pos"] <= gt_mask.sum()


def test_grid_covers_any_input_and_scores_are_class_specific(model):
    with torch.no_grad():
        out = model(torch.rand(1, 3, 64, 96))
    assert out["box_params"].shape == (1, 49, 2, 4) and out["image_size"] == (64, 96)
    boxes = out["boxes"][0]  # every centre inside its own cell of 96 / 7 x 64 / 7 pixels
    centre = (boxes[..., :2] + boxes[..., 2:]) / 2  # [49, 2, 2]
    cells = torch.arange(49)
    assert ((centre[..., 0] // (96 / 7)).long() == (cells % 7)[:, None]).all()
    assert ((centre[..., 1] // (64 / 7)).long() == (cells // 7)[:, None]).all()
    scores, flat = model.decode(out)
    assert scores.shape == (1, 98, 3) and flat.shape == (1, 98, 4)
    expected = out["class_probs"][0, 5] * out["confidence"][0, 5, 1]
    assert torch.allclose(scores[0, 11], expected)


def test_loss_falls_on_one_image():
    torch.manual_seed(0)
    model = create_model("yolov1_n", num_classes=2)
    images = torch.rand(2, 3, 64, 64)
    targets = [
        {"boxes": torch.tensor([[8.0, 8.0, 40.0, 36.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.tensor([[30.0, 20.0, 60.0, 62.0]]), "labels": torch.tensor([0])},
    ]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(6):
        _, losses = model.forward_loss(images, targets)
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
        first = first if first is not None else losses["loss"].item()
    assert losses["loss"].item() < 0.7 * first
