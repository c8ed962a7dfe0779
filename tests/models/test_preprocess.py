"""Pre-processing against torchvision's ``GeneralizedRCNNTransform``, and ``Detector.predict``."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes

from detforge.models.preprocess import Preprocess, batch_images, resize_image, scale_boxes_back
from detforge.models.registry import create_model

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _images(sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, h, w, generator=g) for h, w in sizes]


@pytest.mark.parametrize(
    "preprocess, transform",
    [
        (
            Preprocess(resize="shortest_edge", min_size=96, max_size=160),
            dict(min_size=96, max_size=160, image_mean=list(MEAN), image_std=list(STD)),
        ),
        (
            Preprocess(resize="fixed", fixed_size=(80, 80), size_divisible=1, mean=(0.5,) * 3, std=(0.5,) * 3),
            dict(min_size=80, max_size=80, image_mean=[0.5] * 3, image_std=[0.5] * 3, size_divisible=1,
                 fixed_size=(80, 80)),
        ),
    ],
    ids=["shortest_edge", "fixed"],
)  # fmt: skip
def test_batch_normalises_to_torchvisions(preprocess, transform):
    """Resize, pad with the mean colour, then normalise (inside a detforge model) = torchvision's normalise,
    resize, pad with zeros."""
    reference = GeneralizedRCNNTransform(**transform).eval()
    images = _images([(50, 70), (120, 64), (33, 200)])
    expected, _ = reference(images)
    resized = [resize_image(im, preprocess) for im in images]
    assert [tuple(r.shape[-2:]) for r in resized] == [tuple(s) for s in expected.image_sizes]
    batch = batch_images(resized, preprocess)
    mean = torch.tensor(preprocess.mean).reshape(1, 3, 1, 1)
    std = torch.tensor(preprocess.std).reshape(1, 3, 1, 1)
    torch.testing.assert_close((batch - mean) / std, expected.tensors, atol=2e-6, rtol=0)


def test_boxes_scale_back_as_torchvisions():
    boxes = torch.rand(7, 4) * 100
    torch.testing.assert_close(
        scale_boxes_back(boxes, (96, 143), (67, 100)), resize_boxes(boxes, [96, 143], [67, 100]), atol=0, rtol=0
    )


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="resize must be one of"):
        Preprocess(resize="stretch")
    with pytest.raises(ValueError, match="fixed_size"):
        Preprocess(resize="fixed")
    with pytest.raises(ValueError, match="pad_value"):
        Preprocess(pad_value="white")


def test_predict_takes_images_of_any_size_and_answers_in_their_pixels():
    """predict = resize + pad + forward + postprocess by hand, boxes scaled back to each image."""
    torch.manual_seed(0)
    model = create_model("detforge_n", num_classes=3, score_thresh=0.0).train()
    images = _images([(60, 90), (100, 40)])
    found = model.predict(images)
    assert model.training  # the mode is restored
    preprocess = model.preprocess
    assert preprocess.resize == "letterbox" and preprocess.max_size == 256 and preprocess.pad_value == "zero"
    resized = [resize_image(im, preprocess) for im in images]
    sizes = [tuple(r.shape[-2:]) for r in resized]
    model.eval()
    with torch.no_grad():
        expected = model.postprocess(model(batch_images(resized, preprocess)), sizes)
    for image, det, exp, size in zip(images, found, expected, sizes, strict=True):
        h, w = image.shape[-2:]
        assert len(det["boxes"]) > 0
        torch.testing.assert_close(det["boxes"], scale_boxes_back(exp["boxes"], size, (h, w)))
        assert torch.equal(det["labels"], exp["labels"]) and torch.equal(det["scores"], exp["scores"])
        assert det["boxes"][:, 2].max() <= w + 1e-4 and det["boxes"][:, 3].max() <= h + 1e-4
    assert [len(d["boxes"]) for d in model.predict(torch.stack([images[0], images[0]]))] == [len(found[0]["boxes"])] * 2


def test_predict_names_a_bad_image():
    model = create_model("detforge_n", num_classes=3)
    with pytest.raises(ValueError, match="image 1 must be a Tensor\\[3, H, W\\]"):
        model.predict([torch.rand(3, 20, 20), torch.rand(1, 20, 20)])
    with pytest.raises(ValueError, match="image 0 is torch.uint8"):
        model.predict([torch.zeros(3, 20, 20, dtype=torch.uint8)])
