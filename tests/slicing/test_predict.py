"""sliced_predict with fake models (model-agnostic: boxes mapped back, straddling objects merged, tiles
batched) and one real tiny detector."""

import math

import pytest
import torch

from detforge.slicing import sliced_predict, tile_windows


class ObjectsInTiles:
    """A fake predictor that 'sees' fixed objects (xyxy in the whole image) through each tile: each visible
    part, clipped to the tile, in tile pixels, scored by the visible fraction. It reads the tile's position
    from a marker: the tile's pixel values are the image's, which encode x + 1000 * y in channel 0."""

    def __init__(self, objects, labels):
        self.objects = torch.tensor(objects, dtype=torch.float32)  # [K, 4]
        self.labels = torch.tensor(labels)
        self.calls: list[tuple[int, ...]] = []

    def __call__(self, images, sizes):
        self.calls.append(tuple(images.shape))
        out = []
        for image, (h, w) in zip(images, sizes, strict=True):
            code = int(round(float(image[0, 0, 0]) * 1e6))
            x0, y0 = code % 1000, code // 1000
            window = torch.tensor([x0, y0, x0 + w, y0 + h], dtype=torch.float32)
            lo = torch.maximum(self.objects[:, :2], window[:2])
            hi = torch.minimum(self.objects[:, 2:], window[2:])
            visible = ((hi - lo).clamp(min=0).prod(1)) / (self.objects[:, 2:] - self.objects[:, :2]).prod(1)
            seen = visible > 0
            boxes = torch.cat([lo, hi], 1)[seen] - window[:2].repeat(2)
            out.append({"boxes": boxes, "scores": 0.5 + 0.5 * visible[seen], "labels": self.labels[seen]})
        return out


def coded_image(h, w):
    """Tensor[3, H, W] whose channel 0 encodes each pixel's (x + 1000 y) / 1e6 (so a tile knows its corner)."""
    y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack([(x + 1000 * y).double() / 1e6, torch.zeros(h, w), torch.zeros(h, w)]).float()


def test_a_box_straddling_tile_borders_is_merged_back_into_one():
    image = coded_image(200, 300)
    obj = [[60.0, 90.0, 140.0, 130.0], [10.0, 10.0, 30.0, 30.0]]  # the first crosses tile borders
    model = ObjectsInTiles(obj, [1, 0])
    windows = tile_windows(200, 300, 128, 0.2)
    assert len(windows) > 4
    for merge in ("nmm", "nms"):
        found = sliced_predict(model, image, slice_size=128, overlap=0.2, batch_size=4, merge=merge,
                               match_metric="ios", match_thresh=0.5)[0]  # fmt: skip
        assert len(found["boxes"]) == 2
        big = found["labels"] == 1
        if merge == "nmm":  # the union of the pieces is the whole object
            torch.testing.assert_close(found["boxes"][big], torch.tensor(obj[:1]))
        torch.testing.assert_close(found["boxes"][~big], torch.tensor(obj[1:]))  # mapped back exactly
    # on IoU the cut pieces do not match: several boxes survive (why IoS is the default)
    iou = sliced_predict(model, image, 128, 0.2, merge="nms", match_metric="iou", match_thresh=0.5)[0]
    assert (iou["labels"] == 1).sum() > 1


@pytest.mark.parametrize("batch_size", [1, 3, 7, 100])
def test_tiles_of_all_images_run_as_batches(batch_size):
    images = [coded_image(200, 300), coded_image(100, 90)]
    model = ObjectsInTiles([[5.0, 5.0, 20.0, 20.0]], [0])
    total = len(tile_windows(200, 300, 64, 0.25)) + len(tile_windows(100, 90, 64, 0.25))
    found = sliced_predict(model, images, slice_size=64, overlap=0.25, batch_size=batch_size)
    assert len(model.calls) == math.ceil(total / batch_size)
    assert all(shape[1:] == (3, 64, 64) for shape in model.calls)
    assert sum(shape[0] for shape in model.calls) == total
    assert [len(f["boxes"]) for f in found] == [1, 1]


def test_image_smaller_than_the_slice_is_padded_and_clipped_and_whole_image_pass():
    model = ObjectsInTiles([[40.0, 30.0, 80.0, 60.0]], [2])
    image = coded_image(70, 90)
    found = sliced_predict(
        model, image, slice_size=128, batch_size=2, full_image_pass=True, full_image_size=64
    )
    assert model.calls == [(1, 3, 128, 128), (1, 3, 64, 64)]  # one padded tile, one letterboxed whole image
    # the whole-image pass sees corner code 0 as well, so its box maps back to the same place, scaled
    assert found[0]["labels"].tolist() == [2]
    torch.testing.assert_close(found[0]["boxes"], torch.tensor([[40.0, 30.0, 80.0, 60.0]]))


def test_real_tiny_detector_one_tile_equals_the_plain_prediction():
    from detforge.models.fcos import FCOS

    torch.manual_seed(0)
    model = FCOS(
        "resnet10t", 3, fpn_channels=16, head_num_convs=1, input_size=(64, 64), score_thresh=0.01
    ).eval()
    image = torch.rand(3, 50, 60, generator=torch.Generator().manual_seed(0))
    # one tile holding the whole image and nothing merged (no metric reaches 1.5): the model's own detections
    found = sliced_predict(model, image, slice_size=64, match_thresh=1.5)[0]
    padded = torch.full((1, 3, 64, 64), 114 / 255)
    padded[0, :, :50, :60] = image
    with torch.no_grad():
        plain = model.postprocess(model(padded), [(50, 60)])[0]
    assert len(plain["boxes"]) > 0
    torch.testing.assert_close(found["boxes"], plain["boxes"])
    torch.testing.assert_close(found["scores"], plain["scores"])
    # sliced on a larger image: boxes inside it, merged, best first
    big = torch.rand(3, 150, 200, generator=torch.Generator().manual_seed(1))
    out = sliced_predict(model, big, slice_size=64, overlap=0.2, batch_size=8, full_image_pass=True)[0]
    assert len(out["boxes"]) > 0 and (out["scores"][:-1] >= out["scores"][1:]).all()
    assert (
        (out["boxes"][:, :2] >= 0).all()
        and (out["boxes"][:, 2] <= 200).all()
        and (out["boxes"][:, 3] <= 150).all()
    )
