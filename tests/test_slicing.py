import pytest
import torch

from detforge.slicing import tile_windows


def sahi_slice_bboxes(height, width, slice_h, slice_w, overlap_h, overlap_w):
    """SAHI's ``get_slice_bboxes`` loop (sahi/slicing.py), copied as the reference."""
    out = []
    y_max = y_min = 0
    y_overlap, x_overlap = int(overlap_h * slice_h), int(overlap_w * slice_w)
    while y_max < height:
        x_min = x_max = 0
        y_max = y_min + slice_h
        while x_max < width:
            x_max = x_min + slice_w
            if y_max > height or x_max > width:
                xmax, ymax = min(width, x_max), min(height, y_max)
                out.append([max(0, xmax - slice_w), max(0, ymax - slice_h), xmax, ymax])
            else:
                out.append([x_min, y_min, x_max, y_max])
            x_min = x_max - x_overlap
        y_min = y_max - y_overlap
    return out


@pytest.mark.parametrize(
    "h, w, s, o",
    [
        (512, 512, 512, 0.2),  # exactly one tile
        (513, 512, 512, 0.2),  # one pixel over: a second row flush with the border
        (100, 700, 256, 0.2),  # smaller than the slice along one axis
        (1000, 1000, 512, 0.0),  # no overlap
        (922, 922, 512, 0.2),  # the second tile ends exactly at the border
        (1024, 768, (300, 200), (0.25, 0.1)),  # non-square slices, per-axis overlap
        (2000, 3001, 640, 0.5),
    ],
)
def test_windows_match_sahi_cover_and_stay_inside(h, w, s, o):
    win = tile_windows(h, w, s, o)
    sh, sw = (s, s) if isinstance(s, int) else s
    oh, ow = (o, o) if isinstance(o, float) else o
    assert win.dtype == torch.int64 and win.shape[1] == 4
    assert win.tolist() == sahi_slice_bboxes(h, w, sh, sw, oh, ow)
    assert (win[:, :2] >= 0).all() and (win[:, 2] <= w).all() and (win[:, 3] <= h).all()
    assert ((win[:, 2] - win[:, 0]) == min(sw, w)).all() and ((win[:, 3] - win[:, 1]) == min(sh, h)).all()
    covered = torch.zeros(h, w, dtype=torch.bool)
    for x0, y0, x1, y1 in win.tolist():
        covered[y0:y1, x0:x1] = True
    assert covered.all()
    assert len({tuple(t) for t in win.tolist()}) == len(win)  # no duplicate tile


def test_smaller_than_slice_is_one_whole_tile():
    assert tile_windows(64, 96, 512).tolist() == [[0, 0, 96, 64]]


def test_overlap_between_neighbours():
    win = tile_windows(512, 1000, 512, 0.2)
    assert win[:, 0].tolist() == [0, 410, 488]  # step 512 - int(0.2 * 512) = 410, last flush with 1000
    assert win[:, 2].tolist() == [512, 922, 1000]


@pytest.mark.parametrize("kwargs", [{"overlap": 1.0}, {"overlap": -0.1}, {"slice_size": 0}])
def test_invalid_arguments(kwargs):
    args = {"height": 100, "width": 100, "slice_size": 32, "overlap": 0.2} | kwargs
    with pytest.raises(ValueError):
        tile_windows(**args)
