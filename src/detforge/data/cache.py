"""A decoded-image cache for small data sets (``DetectionDataModule(cache="ram")``, ``--data.cache ram``).

Decoding a JPEG / PNG costs more than the rest of a sample's loading; a data set of a few hundred images is
decoded again every epoch. :func:`cache_images` decodes a :class:`~detforge.data.base.DetectionDataset`'s images
once, in the main process before the DataLoader starts (its workers then share the decoded pages), and keeps
them as uint8 ``Tensor[C, H, W]`` up to a size limit. What does not fit is decoded as before, and a warning
says how much of the data set fits.
"""

from __future__ import annotations

import warnings

from torch import Tensor

__all__ = ["ImageCache", "cache_images"]


class ImageCache:
    """Decoded images by index, bounded by ``max_bytes`` (uint8 ``Tensor[C, H, W]`` each).

    Attributes:
        images: index -> decoded image.
        nbytes: bytes held.
        max_bytes: the limit; :meth:`add` refuses an image that would pass it.
    """

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"cache size limit must be >= 0 bytes, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self.images: dict[int, Tensor] = {}
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self.images)

    def get(self, index: int) -> Tensor | None:
        return self.images.get(index)

    def add(self, index: int, image: Tensor) -> bool:
        """Keep ``image`` unless it would pass ``max_bytes``; returns whether it was kept."""
        size = image.numel() * image.element_size()
        if self.nbytes + size > self.max_bytes:
            return False
        self.images[index] = image.contiguous()
        self.nbytes += size
        return True


def cache_images(dataset, max_bytes: int, name: str = "data") -> ImageCache | None:
    """Decode ``dataset``'s images (a ``DetectionDataset``: ``load_image(i)``) into a new :class:`ImageCache`
    set as ``dataset.image_cache``, stopping at the first image that does not fit (with a warning naming how
    many fit and the limit). Returns the cache, or None (with a warning) for a data set that cannot be cached."""
    if not hasattr(dataset, "load_image") or not hasattr(dataset, "image_cache"):
        warnings.warn(
            f"data cache: the {name} data set ({type(dataset).__name__}) has no decoded-image cache; "
            "it loads as before",
            stacklevel=2,
        )
        return None
    cache = ImageCache(max_bytes)
    dataset.image_cache = None  # decode from the files, not from an older cache
    for index in range(len(dataset)):
        if not cache.add(index, dataset.load_image(index)):
            warnings.warn(
                f"data cache: {len(cache)} of {len(dataset)} {name} images fit in the {max_bytes / 2**30:.2f} GB "
                f"limit (--data.cache_gb); the others are decoded every time they are read",
                stacklevel=2,
            )
            break
    dataset.image_cache = cache
    return cache
