"""Image loading: files and raw bytes to float32 ``[C, H, W]`` tensors in [0, 1].

JPEG, PNG, GIF and WebP decode with torchvision's native decoders; BMP, TIFF and anything else Pillow reads
fall back to Pillow. Grayscale, palette and RGBA images come back as RGB; ``mode="L"`` gives one channel
(thermal cameras). EXIF orientation is honoured on both paths, so a portrait phone photo loads upright and
its size is the size a user sees.

Errors name the file: a missing file raises ``FileNotFoundError``, an unreadable one ``ValueError``.
"""

from __future__ import annotations

import os
from io import BytesIO
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor
from torchvision.io import ImageReadMode
from torchvision.transforms.v2 import functional as TF

__all__ = [
    "ImageMode",
    "decode_image_bytes",
    "image_size",
    "load_image",
    "load_image_resized",
    "load_image_uint8",
    "load_image_with_info",
    "resize_uint8",
    "rgb_bytes_to_tensor",
]

ImageMode = Literal["RGB", "L"]
_MODES = ("RGB", "L")
_READ_MODE = {"RGB": ImageReadMode.RGB.value, "L": ImageReadMode.GRAY.value}
# EXIF orientations 5..8 rotate by 90 degrees, so the displayed size is the stored size transposed.
_EXIF_ORIENTATION = 0x0112
_TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)


def _check_mode(mode: str) -> None:
    if mode not in _MODES:
        raise ValueError(f"image mode must be one of {_MODES}, got {mode!r}")


def _torchvision_format(head: bytes) -> str | None:
    """Which torchvision decoder handles these leading bytes (None: use Pillow)."""
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if head[:4] == b"GIF8":
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return None


def _decode_pillow(data: bytes, mode: ImageMode) -> Tensor:
    with Image.open(BytesIO(data)) as img:
        img = ImageOps.exif_transpose(img)
        array = np.asarray(img.convert(mode))
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()  # [C, H, W]


def decode_image_bytes(data: bytes, mode: ImageMode = "RGB", name: str = "<bytes>") -> Tensor:
    """Decode an encoded image (JPEG, PNG, BMP, TIFF, WebP, GIF, ...) to uint8 ``Tensor[C, H, W]``.

    Args:
        data: the encoded file's bytes.
        mode: ``"RGB"`` (C = 3) or ``"L"`` (C = 1).
        name: how errors refer to the image (usually its path).

    Raises:
        ValueError: the bytes are not a readable image; the message names ``name``.
    """
    _check_mode(mode)
    fmt = _torchvision_format(data[:12])
    # torchvision returns 4 channels for WebP in gray mode; Pillow handles that case.
    if fmt is not None and not (fmt == "webp" and mode == "L"):
        try:
            raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
            image = torch.ops.image.decode_image(raw, _READ_MODE[mode], True)
            if image.dtype != torch.uint8:  # 16-bit PNG
                image = (image.to(torch.int32) // 257).to(torch.uint8)
            if image.ndim == 4:  # animated GIF: first frame
                image = image[0]
            return image
        except RuntimeError:
            pass  # Pillow reads some files libjpeg/libpng reject (and gives the same error otherwise)
    try:
        return _decode_pillow(data, mode)
    except UnidentifiedImageError:
        what = "empty file" if not data else "unknown image format or corrupt data"
        raise ValueError(f"{name}: not a readable image ({what})") from None
    except (OSError, ValueError, SyntaxError) as err:
        raise ValueError(f"{name}: not a readable image ({err})") from None


def _read_bytes(path: str | os.PathLike) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {os.fspath(path)}") from None
    except IsADirectoryError:
        raise ValueError(f"{os.fspath(path)}: is a directory, not an image file") from None


def load_image_uint8(path: str | os.PathLike, mode: ImageMode = "RGB") -> Tensor:
    """Read an image file to uint8 ``Tensor[C, H, W]`` (C = 3 for ``"RGB"``, 1 for ``"L"``), EXIF-upright.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is not a readable image.
    """
    return decode_image_bytes(_read_bytes(path), mode, name=os.fspath(path))


def load_image(path: str | os.PathLike, mode: ImageMode = "RGB") -> Tensor:
    """Read an image file to float32 ``Tensor[C, H, W]`` in [0, 1] (C = 3, or 1 with ``mode="L"``)."""
    return load_image_uint8(path, mode).float().div_(255)


def load_image_with_info(path: str | os.PathLike, mode: ImageMode = "RGB") -> tuple[Tensor, tuple[int, int]]:
    """Read an image file: (float32 ``Tensor[C, H, W]`` in [0, 1], (orig_h, orig_w))."""
    image = load_image(path, mode)
    return image, (int(image.shape[-2]), int(image.shape[-1]))


def resize_uint8(image: Tensor, height: int, width: int) -> Tensor:
    """Antialiased bilinear resize of uint8 ``image`` (Tensor[C, H, W]) to uint8 ``Tensor[C, height, width]``."""
    if height <= 0 or width <= 0:
        raise ValueError(f"target size must be positive, got (h={height}, w={width})")
    if tuple(image.shape[-2:]) == (height, width):
        return image
    return TF.resize(image, [height, width], antialias=True)


def load_image_resized(path: str | os.PathLike, h: int, w: int, mode: ImageMode = "RGB") -> Tensor:
    """Read an image file resized (antialiased, aspect not kept) to float32 ``Tensor[C, h, w]`` in [0, 1]."""
    return resize_uint8(load_image_uint8(path, mode), h, w).float().div_(255)


def rgb_bytes_to_tensor(data: bytes | bytearray | memoryview, h: int, w: int) -> Tensor:
    """Raw interleaved RGB bytes (``h * w * 3``, row-major, as cameras and video decoders hand them out)
    to float32 ``Tensor[3, h, w]`` in [0, 1].

    Raises:
        ValueError: ``len(data) != h * w * 3``; the message gives both numbers.
    """
    if h <= 0 or w <= 0:
        raise ValueError(f"h and w must be positive, got h={h}, w={w}")
    expected = h * w * 3
    if len(data) != expected:
        raise ValueError(f"rgb_bytes_to_tensor: expected {expected} bytes for {h}x{w} RGB, got {len(data)}")
    pixels = torch.frombuffer(bytearray(data), dtype=torch.uint8).view(h, w, 3)  # [h, w, 3]
    return pixels.permute(2, 0, 1).float().div_(255)  # [3, h, w]


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(h, w) of an image file as it loads (EXIF rotation applied), read from the header only.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is not a readable image.
    """
    try:
        with Image.open(path) as img:
            w, h = img.size
            # Pillow's TIFF reader already reports the rotated size.
            if img.format != "TIFF" and img.getexif().get(_EXIF_ORIENTATION) in _TRANSPOSED_ORIENTATIONS:
                w, h = h, w
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {os.fspath(path)}") from None
    except UnidentifiedImageError:
        raise ValueError(
            f"{os.fspath(path)}: not a readable image (unknown image format or corrupt data)"
        ) from None
    except (OSError, SyntaxError) as err:
        raise ValueError(f"{os.fspath(path)}: not a readable image ({err})") from None
    return int(h), int(w)
