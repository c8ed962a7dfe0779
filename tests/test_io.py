"""detforge.io against Pillow as the reference decoder, for every format and mode."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from detforge.io import (
    decode_image_bytes,
    image_size,
    load_image,
    load_image_resized,
    load_image_uint8,
    load_image_with_info,
    rgb_bytes_to_tensor,
)

H, W = 12, 20


def _pixels(channels: int = 3, seed: int = 0) -> np.ndarray:
    shape = (H, W) if channels == 1 else (H, W, channels)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


@pytest.mark.parametrize("fmt", ["png", "bmp", "tiff", "webp"])
def test_lossless_formats_match_pixels(tmp_path, fmt):
    pixels = _pixels()
    path = tmp_path / f"x.{fmt}"
    Image.fromarray(pixels).save(path, **({"lossless": True} if fmt == "webp" else {}))
    image = load_image(path)
    assert image.shape == (3, H, W) and image.dtype == torch.float32
    torch.testing.assert_close(image, torch.from_numpy(pixels).permute(2, 0, 1).float() / 255)


def test_jpeg_matches_pillow_closely(tmp_path):
    path = tmp_path / "x.jpg"
    Image.fromarray(_pixels()).save(path, quality=95)
    reference = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1).float()
    diff = (load_image_uint8(path).float() - reference).abs()
    assert diff.mean() < 2.0  # libjpeg builds differ by rounding only


@pytest.mark.parametrize(("mode", "channels"), [("L", 1), ("LA", 2), ("RGBA", 4), ("P", 1)])
def test_grayscale_palette_and_alpha_become_rgb(tmp_path, mode, channels):
    pil = (
        Image.fromarray(_pixels(channels)).convert(mode)
        if mode != "P"
        else Image.fromarray(_pixels()).convert("P")
    )
    path = tmp_path / "x.png"
    pil.save(path)
    image = load_image_uint8(path)
    expected = torch.from_numpy(np.array(pil.convert("RGB"))).permute(2, 0, 1)
    assert image.shape == (3, H, W)
    torch.testing.assert_close(image, expected)


@pytest.mark.parametrize("fmt", ["png", "jpg", "bmp", "webp"])
def test_mode_l_gives_one_channel(tmp_path, fmt):
    path = tmp_path / f"x.{fmt}"
    Image.fromarray(_pixels()).save(path)
    image = load_image(path, mode="L")
    assert image.shape == (1, H, W)
    reference = torch.from_numpy(np.array(Image.open(path).convert("L"))).float() / 255
    assert (image[0] - reference).abs().mean() < 2 / 255


def test_sixteen_bit_png(tmp_path):
    path = tmp_path / "x.png"
    Image.fromarray(np.arange(H * W, dtype=np.uint16).reshape(H, W) * 200).save(path)
    image = load_image_uint8(path)
    assert image.dtype == torch.uint8 and image.shape == (3, H, W)


@pytest.mark.parametrize(("orientation", "shape"), [(1, (H, W)), (3, (H, W)), (6, (W, H)), (8, (W, H))])
def test_exif_orientation_honoured(tmp_path, orientation, shape):
    pixels = np.zeros((H, W, 3), np.uint8)
    pixels[:4, :4] = 255  # a white top-left corner
    pil = Image.fromarray(pixels)
    exif = pil.getexif()
    exif[0x0112] = orientation
    for fmt in ("jpg", "tiff"):  # torchvision path and Pillow path
        path = tmp_path / f"x.{fmt}"
        pil.save(path, exif=exif.tobytes(), **({"quality": 100} if fmt == "jpg" else {}))
        image = load_image_uint8(path)
        reference = np.array(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
        assert image.shape[1:] == shape and image_size(path) == shape
        assert (image.permute(1, 2, 0).float() - torch.from_numpy(reference).float()).abs().mean() < 3


def test_resized_and_with_info(tmp_path):
    path = tmp_path / "x.png"
    Image.fromarray(_pixels()).save(path)
    assert load_image_resized(path, 6, 10).shape == (3, 6, 10)
    image, (h, w) = load_image_with_info(path)
    assert (h, w) == (H, W) and image.shape == (3, H, W)
    flat = np.full((H, W, 3), 77, np.uint8)
    Image.fromarray(flat).save(path)
    torch.testing.assert_close(load_image_resized(path, 5, 7), torch.full((3, 5, 7), 77 / 255))


def test_missing_file_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        image_size(tmp_path / "nope.jpg")


@pytest.mark.parametrize(
    "data", [b"", b"hello world", b"\xff\xd8\xff\xe0" + b"\x00" * 40, b"\x89PNG\r\n\x1a\nxx"]
)
def test_corrupt_file_raises_value_error_naming_path(tmp_path, data):
    path = tmp_path / "bad.jpg"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=r"bad\.jpg"):
        load_image(path)


def test_truncated_jpeg(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(_pixels()).save(buf, "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ValueError, match=r"cut\.jpg"):
        load_image(path)


def test_rgb_bytes_to_tensor():
    pixels = _pixels()
    image = rgb_bytes_to_tensor(pixels.tobytes(), H, W)
    torch.testing.assert_close(image, torch.from_numpy(pixels).permute(2, 0, 1).float() / 255)
    with pytest.raises(ValueError, match=f"expected {H * W * 3} bytes.*got {H * W * 3 - 1}"):
        rgb_bytes_to_tensor(pixels.tobytes()[:-1], H, W)


def test_bad_mode():
    with pytest.raises(ValueError, match="'RGB', 'L'"):
        decode_image_bytes(b"", mode="CMYK")
