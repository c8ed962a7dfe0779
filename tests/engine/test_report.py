"""``report.html``: the page names only files that exist, its per-class table has one row per class, and the
gallery shows the images with the most missed objects and false detections (counted by a plain loop here)."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from detforge.engine.report import gallery_images, write_report
from detforge.metrics.confusion import MatchInputs, image_errors
from detforge.metrics.f1 import summarize

CLASSES = ["cat", "dog", "bird"]


class _Page(HTMLParser):
    """The image sources, links and per-class table rows of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []
        self.links: list[str] = []
        self.rows: list[list[str]] = []
        self._table: str | None = None
        self._cell: list[str] | None = None
        self._in_body = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.sources.append(attrs["src"])
        elif tag == "a":
            self.links.append(attrs["href"])
        elif tag == "table":
            self._table = attrs.get("class")
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body and self._table == "per-class":
            self.rows.append([])
        elif tag == "td" and self._in_body and self._table == "per-class":
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self.rows[-1].append("".join(self._cell))
            self._cell = None
        elif tag == "tbody":
            self._in_body = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _dataset(num: int, g: torch.Generator) -> list[tuple[torch.Tensor, dict]]:
    """``num`` 64x64 images with 0-3 objects each (boxes in pixels, labels in [0, 3))."""
    items = []
    for _ in range(num):
        n = int(torch.randint(0, 4, (1,), generator=g))
        xy = torch.rand(n, 2, generator=g) * 40
        boxes = torch.cat([xy, xy + 8 + torch.rand(n, 2, generator=g) * 16], 1)
        target = {
            "boxes": boxes,
            "labels": torch.randint(0, 3, (n,), generator=g),
            "size": torch.tensor([64, 64]),
        }
        items.append((torch.rand(3, 64, 64, generator=g), target))
    return items


def _detections(dataset, g: torch.Generator) -> list[dict]:
    """Per image: most objects found (some shifted away, some with the wrong class), plus a few false boxes."""
    preds = []
    for _, target in dataset:
        boxes = target["boxes"].clone()
        boxes[::3] += 30  # every third object missed (its detection lands elsewhere)
        labels = target["labels"].clone()
        labels[1::4] = (labels[1::4] + 1) % 3
        extra = int(torch.randint(0, 3, (1,), generator=g))
        boxes = torch.cat(
            [boxes, torch.rand(extra, 2, generator=g).repeat(1, 2) * 50 + torch.tensor([0, 0, 6, 6])]
        )
        labels = torch.cat([labels, torch.randint(0, 3, (extra,), generator=g)])
        preds.append(
            {"boxes": boxes, "scores": torch.rand(len(boxes), generator=g) * 0.9 + 0.1, "labels": labels}
        )
    return preds


def _stats(dataset, preds) -> dict:
    inputs = MatchInputs.from_counts(
        det_boxes=torch.cat([p["boxes"] for p in preds]),
        det_scores=torch.cat([p["scores"] for p in preds]),
        det_labels=torch.cat([p["labels"] for p in preds]),
        det_counts=torch.tensor([len(p["boxes"]) for p in preds]),
        gt_boxes=torch.cat([t["boxes"] for _, t in dataset]),
        gt_labels=torch.cat([t["labels"] for _, t in dataset]),
        gt_counts=torch.tensor([len(t["boxes"]) for _, t in dataset]),
    )
    summary = summarize(inputs, num_classes=3)
    stats = {key: torch.tensor(0.5) for key in ("map", "map_50", "map_75", "mar_1", "mar_10", "mar_100")}
    stats.update(
        map_per_class=torch.tensor([0.4, 0.6]),
        mar_100_per_class=torch.tensor([0.5, 0.7]),
        classes=torch.tensor([0, 2], dtype=torch.int32),  # class 1 has no ground truth and no AP
        detection_summary=summary,
    )
    return stats, inputs, summary


def test_page_names_existing_files_and_one_row_per_class(tmp_path: Path):
    g = torch.Generator().manual_seed(0)
    dataset = _dataset(12, g)
    preds = _detections(dataset, g)
    stats, inputs, summary = _stats(dataset, preds)
    Image.new("RGB", (20, 10)).save(tmp_path / "curves.png")
    Image.new("RGB", (20, 10)).save(tmp_path / "labels.png")
    missed, false = image_errors(inputs, summary.confusion_conf)

    def predict(images, sizes, preds=preds):  # the stored detections of the image asked for
        return [preds[next(i for i, (img, _) in enumerate(dataset) if torch.equal(img, images[0]))]]

    gallery = gallery_images(
        tmp_path, predict, dataset, missed, false, summary.confusion_conf, CLASSES, count=3
    )
    page_path = write_report(tmp_path, stats, CLASSES, gallery, title="run", notes=["synthetic"])

    page = _Page()
    page.feed(page_path.read_text())
    assert page.sources, "the page shows no picture"
    for name in page.sources + page.links:
        assert (tmp_path / name).is_file(), f"the page names {name}, which does not exist"
    assert "curves.png" in page.sources and "labels.png" in page.sources
    assert "pr_curves.png" not in page.sources  # not written: not named
    assert [row[0] for row in page.rows] == CLASSES
    assert page.rows[1][1] == "-"  # no AP for the class without ground truth
    matrix = summary.confusion_matrix
    for c, row in enumerate(page.rows):
        assert row[4:] == [str(matrix[c].sum()), str(matrix[c, -1]), str(matrix[-1, c])]


def test_gallery_shows_the_images_with_most_errors(tmp_path: Path):
    """The gallery's images are the 3 with the most missed objects and the 3 with the most false detections,
    as counted here image by image (a detection at or above the confidence is right when it overlaps an
    object of the image by IoU >= 0.5, greedy by IoU, each box used once)."""
    g = torch.Generator().manual_seed(1)
    dataset = _dataset(15, g)
    preds = _detections(dataset, g)
    _, inputs, summary = _stats(dataset, preds)
    conf = summary.confusion_conf
    from torchvision.ops import box_iou

    expected_missed, expected_false = [], []
    for (_, t), p in zip(dataset, preds, strict=True):
        keep = p["scores"] >= conf
        boxes = p["boxes"][keep]
        iou = (
            box_iou(t["boxes"], boxes)
            if len(t["boxes"]) and len(boxes)
            else torch.zeros(len(t["boxes"]), len(boxes))
        )
        pairs = sorted(
            (
                (float(iou[i, j]), i, j)
                for i in range(iou.shape[0])
                for j in range(iou.shape[1])
                if iou[i, j] >= 0.5
            ),
            reverse=True,
        )
        used_g, used_d = set(), set()
        for _, i, j in pairs:
            if i not in used_g and j not in used_d:
                used_g.add(i)
                used_d.add(j)
        expected_missed.append(len(t["boxes"]) - len(used_g))
        expected_false.append(len(boxes) - len(used_d))
    missed, false = image_errors(inputs, conf)
    assert missed.tolist() == expected_missed and false.tolist() == expected_false
    gallery = gallery_images(
        tmp_path, lambda images, sizes: [preds[0]], dataset, missed, false, conf, count=3
    )
    top_missed = [
        i for i in np.argsort(-np.array(expected_missed), kind="stable")[:3] if expected_missed[i] > 0
    ]
    top_false = [i for i in np.argsort(-np.array(expected_false), kind="stable")[:3] if expected_false[i] > 0]
    assert [g.file for g in gallery if g.section == "missed"] == [
        f"report/missed_{i}.jpg" for i in top_missed
    ]
    assert [g.file for g in gallery if g.section == "false"] == [f"report/false_{i}.jpg" for i in top_false]
    for item in gallery:
        assert Image.open(tmp_path / item.file).size == (320 * 2 + 4, 320)  # truth | predictions, 64 px x 5
