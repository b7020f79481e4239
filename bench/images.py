"""The photo-like JPEGs every benchmark feeds its model: not pure noise, not flat."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageFilter


def photo_jpeg(size: int = 224, seed: int = 0) -> bytes:
    """A ``size``×``size`` JPEG: smooth colour fields (coarse noise upsampled) with some blurred texture."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((size, size), Image.BICUBIC)
    texture = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).filter(ImageFilter.GaussianBlur(2))
    buffer = io.BytesIO()
    Image.blend(coarse, texture, 0.3).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()
