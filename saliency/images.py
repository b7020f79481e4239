"""Decode untrusted image bytes or files into an upright RGB picture, or raise :class:`ImageError`.

One door for the library, the CLI (paths) and the HTTP service (uploaded bytes). Nothing is written
to disk. Checks, in order: the source exists and is not empty; Pillow recognises the format; the
declared size is sane (pixel count, side length, aspect ratio) — all before any pixel is decoded;
then the first frame is decoded in full (a truncated file is an error, never half an image), turned
upright by its EXIF orientation and converted to 8-bit RGB (transparency composited on white).
"""

from __future__ import annotations

import io
import os
import threading
import warnings
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from saliency.errors import ImageError

MAX_PIXELS = 40_000_000
"""Default largest accepted picture, in pixels (about 7700 × 5200)."""
MAX_SIDE = 16_384
"""Largest accepted width or height."""
MAX_ASPECT = 50.0
"""Largest accepted ratio of the long side to the short side."""

ImageSource = bytes | bytearray | memoryview | str | os.PathLike | BinaryIO

# ``warnings.catch_warnings`` swaps process-wide state; serialise the (header-only) open step.
_OPEN_LOCK = threading.Lock()


def open_image(source: ImageSource, *, max_pixels: int = MAX_PIXELS, max_side: int = MAX_SIDE,
               max_aspect: float = MAX_ASPECT) -> Image.Image:
    """Decode ``source`` (bytes, a path or a binary file object) into an upright RGB PIL image.

    Animations give their first frame. Alpha and palette transparency are composited on white;
    CMYK, grayscale, 16-bit and floating-point pictures are converted to 8-bit RGB.
    Raises :class:`~saliency.errors.ImageError` with a message saying what is wrong.
    """
    data, name = _read(source)
    with _open(data, name) as im:
        _check_size(im.size, name, max_pixels=max_pixels, max_side=max_side, max_aspect=max_aspect)
        _load(im, name)
        upright = _upright(im)
        return _to_rgb(upright, name)


def peek(source: ImageSource) -> tuple[tuple[int, int], str]:
    """``(width, height)`` and Pillow mode of ``source`` read from its header, nothing decoded.

    For sizing the work before it is done; raises :class:`~saliency.errors.ImageError` as
    :func:`open_image` would for a file that is not an image.
    """
    data, name = _read(source)
    with _open(data, name) as im:
        return im.size, im.mode


def _read(source: ImageSource) -> tuple[bytes, str]:
    """The raw bytes of ``source`` and a name for messages."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data, name = bytes(source), "the uploaded image"
    elif isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        name = repr(str(path))
        if not os.path.exists(path):
            if os.path.islink(path):
                raise ImageError(f"image file {name} is a symbolic link to nothing (broken or looping)")
            raise ImageError(f"image file {name} does not exist; check the path")
        if os.path.isdir(path):
            raise ImageError(f"{name} is a folder, not an image file")
        if not os.path.isfile(path):  # reading a pipe or a device could wait for ever
            raise ImageError(f"{name} is not a regular file (a pipe, socket or device), not an image file")
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except OSError as exc:
            raise ImageError(f"cannot read image file {name}: {exc.strerror or exc}") from exc
    elif hasattr(source, "read"):
        name = repr(str(getattr(source, "name", None))) if getattr(source, "name", None) else "the image stream"
        data = source.read()
        if not isinstance(data, (bytes, bytearray)):
            raise ImageError(f"{name} must be opened in binary mode")
        data = bytes(data)
    else:
        raise ImageError(f"cannot read an image from a {type(source).__name__}; "
                         "pass bytes, a file path or a binary file object")
    if not data:
        raise ImageError(f"{name} is empty (0 bytes); send a PNG, JPEG, GIF, WebP, BMP or TIFF file")
    return data, name


def _open(data: bytes, name: str) -> Image.Image:
    """Read the header only; Pillow's decompression-bomb warning becomes an error."""
    try:
        with _OPEN_LOCK, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{name} is refused as a possible decompression bomb: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"{name} is not an image Pillow can read "
                         "(expected PNG, JPEG, GIF, WebP, BMP, TIFF, ...)") from exc
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as exc:
        raise ImageError(f"{name} has a corrupt header: {exc}") from exc


def _check_size(size: tuple[int, int], name: str, *, max_pixels: int, max_side: int,
                max_aspect: float) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise ImageError(f"{name} has no pixels ({width}×{height})")
    if width > max_side or height > max_side:
        side = "width" if width > max_side else "height"
        raise ImageError(f"{name} is {width}×{height}: its {side} exceeds the limit of {max_side} "
                         "pixels; resize it first")
    if width * height > max_pixels:
        raise ImageError(f"{name} is {width}×{height} = {width * height:,} pixels, more than the "
                         f"limit of {max_pixels:,}; resize it first")
    aspect = max(width, height) / min(width, height)
    if aspect > max_aspect:
        raise ImageError(f"{name} is {width}×{height}: aspect ratio {aspect:.0f}:1 exceeds the limit "
                         f"of {max_aspect:g}:1; crop it first")


def _load(im: Image.Image, name: str) -> None:
    """Decode the first frame in full; truncation or corruption is an error."""
    try:
        im.seek(0)
        im.load()
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{name} is refused as a possible decompression bomb: {exc}") from exc
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, MemoryError) as exc:
        detail = str(exc) or type(exc).__name__
        raise ImageError(f"{name} is truncated or corrupt and cannot be decoded ({detail})") from exc


def _upright(im: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; a damaged EXIF block is ignored, not fatal."""
    try:
        upright = ImageOps.exif_transpose(im)
    except Exception:  # noqa: BLE001 - EXIF parsing of untrusted files raises many kinds of error
        return im
    return im if upright is None else upright


def _to_rgb(im: Image.Image, name: str) -> Image.Image:
    """8-bit RGB; transparency composited on white. Always a new image, detached from the file."""
    mode = im.mode
    if mode.startswith("I") or mode.startswith("F"):
        im = Image.fromarray(_to_uint8(np.asarray(im), sixteen_bit=mode.startswith("I;16")))
        mode = "L"
    has_alpha = "A" in mode or mode in ("RGBa", "La") or "transparency" in im.info
    try:
        if has_alpha:
            rgba = im.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return im.convert("RGB") if mode != "RGB" else im.copy()
    except (ValueError, OSError) as exc:
        raise ImageError(f"{name} uses colour mode {mode!r}, which cannot be converted to RGB") from exc


def _to_uint8(values: np.ndarray, *, sixteen_bit: bool = False) -> np.ndarray:
    """Integer or floating-point samples to 0..255.

    16-bit samples (``sixteen_bit``, or 32-bit integers with a maximum over 255) are scaled by
    255/65535; floats within [0, 1] by 255; other samples within 0..255 are kept; anything else is
    stretched from its minimum to its maximum.
    """
    x = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
    if sixteen_bit:
        x = x * (255.0 / 65535.0)
    elif values.dtype.kind == "f" and low >= 0.0 and high <= 1.0:
        x = x * 255.0
    elif low >= 0.0 and high <= 255.0:
        pass
    elif low >= 0.0 and high <= 65535.0:
        x = x * (255.0 / 65535.0)
    elif high > low:
        x = (x - low) * (255.0 / (high - low))
    else:
        x = np.zeros_like(x)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)
