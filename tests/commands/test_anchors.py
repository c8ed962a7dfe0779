import json

from detforge.cli import COMMANDS
from detforge.cli import main as cli_main
from detforge.commands.anchors import compute_anchors, main


def test_anchors_command_prints_nine_anchors_and_mean_iou(capsys):
    assert "anchors" in COMMANDS
    assert main(["--data", "synthetic:32", "--imgsz", "64"]) == 0
    out = capsys.readouterr().out
    assert "mean best IoU:" in out
    anchors = json.loads(out.strip().splitlines()[-1].split(" ", 1)[1].strip("'"))
    assert len(anchors) == 9 and all(len(a) == 2 for a in anchors)
    areas = [w * h for w, h in anchors]
    assert areas == sorted(areas)
    mean_iou = float(out.split("mean best IoU:")[1].split()[0])
    assert 0.5 < mean_iou <= 1.0


def test_anchors_scale_with_the_input_size():
    small, iou_small, n_small = compute_anchors("synthetic:32", 64, k=3)
    large, iou_large, n_large = compute_anchors("synthetic:32", 128, k=3)
    assert n_small > 3 and abs(n_small - n_large) <= 5  # a shape may drop below the minimum size at 64 px
    assert abs(iou_small - iou_large) < 0.1
    # the synthetic shapes are rendered at the input size, so sizes roughly double
    assert 1.5 < large[-1][0] / small[-1][0] < 2.5


def test_too_few_boxes_is_reported(capsys):
    assert cli_main(["anchors", "--data", "synthetic:32", "--imgsz", "64", "--k", "100000"]) == 2
    assert capsys.readouterr().err.startswith("detforge anchors: --k 100000: k-means needs at least k=100000")
