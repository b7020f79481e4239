"""Turn raw attributions into pictures: grayscale saliency, signed RGB, colour heatmaps, overlays.

Conventions (also returned as text by :func:`convention`, so nobody has to guess):

- ``heatmap``: Simonyan et al. — max over colour channels of ``|attribution|``, divided by its
  ``percentile``-th percentile, clipped to [0, 1], then colour-mapped (dark = 0, bright = most).
- ``overlay``: the same heatmap blended over the original picture with weight ``alpha``.
- ``rgb``: Springenberg et al. — the signed attribution divided by the ``percentile``-th
  percentile of ``|attribution|``, mapped to ``0.5 + 0.5 * a`` per channel and clipped, so grey
  means zero, brighter than grey positive, darker negative.

The array functions take one map ``[C, H, W]`` or a batch ``[B, C, H, W]``; everything is numpy
vectorised. When a :class:`~saliency.preprocess.Prepared` is given, pictures are mapped back
onto the original image through ``Prepared.box`` (the region the model's input covers).
"""

from __future__ import annotations

import errno
import io
import os
import secrets
import sys
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Sequence, Union

import numpy as np
from PIL import Image, PngImagePlugin

from saliency.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from saliency.preprocess import Prepared

Style = Literal["heatmap", "overlay", "rgb"]
STYLES: tuple[str, ...] = ("heatmap", "overlay", "rgb")
DEFAULT_STYLE = "heatmap"
DEFAULT_CMAP = "inferno"
DEFAULT_PERCENTILE = 99.0
DEFAULT_ALPHA = 0.5

ArrayLike = Union["torch.Tensor", np.ndarray]


def convention(style: str = DEFAULT_STYLE, *, percentile: float = DEFAULT_PERCENTILE,
               cmap: str = DEFAULT_CMAP, alpha: float = DEFAULT_ALPHA) -> str:
    """One sentence saying how a picture of ``style`` was computed from the raw attribution."""
    _check_style(style)
    p = _percentile_name(percentile)
    if style == "rgb":
        return (f"signed RGB: attribution / {p} of |attribution|, shown as 0.5 + 0.5·a per channel, "
                "clipped (grey = 0, brighter = positive, darker = negative)")
    text = (f"abs: max over channels of |attribution|, clipped at the {p} and scaled to [0, 1]; "
            f"colormap {cmap} (dark = 0, bright = high)")
    if style == "overlay":
        text += f"; blended over the image with alpha {alpha:g}"
    return text


def grayscale(attribution: ArrayLike, percentile: float = DEFAULT_PERCENTILE) -> np.ndarray:
    """Saliency in [0, 1]: max over channels of ``|attribution|``, clipped at a per-map percentile.

    ``[C, H, W] -> [H, W]`` or ``[B, C, H, W] -> [B, H, W]`` (float32).
    """
    a = _as_maps(attribution)
    magnitude = np.abs(a).max(axis=1)
    scaled = _scale_by_percentile(magnitude, magnitude, percentile)
    out = np.clip(scaled, 0.0, 1.0)
    return out[0] if _ndim(attribution) == 3 else out


def signed_rgb(attribution: ArrayLike, percentile: float = DEFAULT_PERCENTILE) -> np.ndarray:
    """Signed attribution as an image in [0, 1]: ``0.5 + 0.5 * a / percentile(|a|)``, clipped.

    One or three channels; ``[C, H, W] -> [H, W, 3]`` or ``[B, C, H, W] -> [B, H, W, 3]`` (float32).
    """
    a = _as_maps(attribution)
    if a.shape[1] not in (1, 3):
        raise InputError(f"the rgb style needs 1 or 3 channels, got {a.shape[1]}; use the heatmap style")
    scaled = _scale_by_percentile(a, np.abs(a), percentile)
    rgb = np.clip(0.5 + 0.5 * scaled, 0.0, 1.0)
    rgb = np.broadcast_to(rgb, (rgb.shape[0], 3, *rgb.shape[2:])).transpose(0, 2, 3, 1)
    return rgb[0] if _ndim(attribution) == 3 else rgb


def colorize(values: np.ndarray, cmap: str = DEFAULT_CMAP) -> np.ndarray:
    """Values in [0, 1] (any shape) -> uint8 RGB through a matplotlib colormap, ``[..., 3]``."""
    return _lookup_table(cmap)[_levels(values)]


def _levels(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> the colour map's entry for each, 0-255 (uint8)."""
    return np.rint(np.clip(values, 0.0, 1.0) * 255).astype(np.uint8)


def render(attribution: ArrayLike, style: str = DEFAULT_STYLE, prepared: "Prepared | None" = None, *,
           alpha: float = DEFAULT_ALPHA, cmap: str = DEFAULT_CMAP,
           percentile: float = DEFAULT_PERCENTILE, image: Image.Image | None = None) -> Image.Image:
    """A picture of one attribution ``[C, H, W]`` (or ``[1, C, H, W]``) in ``style``.

    With ``prepared``, the picture is mapped back to the original image: ``heatmap`` and ``rgb``
    cover the region ``prepared.box`` at its original size; ``overlay`` is the whole original with
    the heatmap blended inside the box (outside it the image is dimmed as if saliency were 0).
    ``overlay`` needs ``prepared`` or ``image`` (the picture the input shows, any size: the
    heatmap is stretched over it). The returned image carries :func:`convention` in
    ``info["Description"]``, which :func:`to_png` writes out.
    """
    return render_batch(_as_single(attribution), style, None if prepared is None else [prepared],
                        alpha=alpha, cmap=cmap, percentile=percentile,
                        images=None if image is None else [image])[0]


def render_batch(attributions: ArrayLike, style: str = DEFAULT_STYLE,
                 prepared: "Sequence[Prepared | None] | None" = None, *, alpha: float = DEFAULT_ALPHA,
                 cmap: str = DEFAULT_CMAP, percentile: float = DEFAULT_PERCENTILE,
                 images: Sequence[Image.Image | None] | None = None) -> list[Image.Image]:
    """:func:`render` for a batch ``[B, C, H, W]``; ``prepared``/``images``: one per sample or None."""
    _check_style(style)
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha must be between 0 and 1, got {alpha:g}")
    maps = _as_maps(attributions)
    batch = len(maps)
    prepared = list(prepared) if prepared is not None else [None] * batch
    images = list(images) if images is not None else [None] * batch
    if len(prepared) != batch or len(images) != batch:
        raise InputError(f"got {batch} attributions but {len(prepared)} prepared inputs and {len(images)} images")
    text = convention(style, percentile=percentile, cmap=cmap, alpha=alpha)
    if style == "rgb":
        pixels = (signed_rgb(maps, percentile) * 255 + 0.5).astype(np.uint8)
    else:
        values = grayscale(maps, percentile)
    out = []
    for i in range(batch):
        if style == "rgb":
            picture = _fit_to_box(Image.fromarray(pixels[i], "RGB"), prepared[i])
        else:
            size = _target_size(prepared[i], images[i] if style == "overlay" else None)
            picture = _heatmap_picture(values[i], cmap, size)
            if style == "overlay":
                picture = _overlay(picture, prepared[i], images[i], alpha, cmap)
        picture.info["Description"] = text
        out.append(picture)
    return out


def to_png(image: Image.Image, text: dict[str, str] | None = None, compress_level: int = 1) -> bytes:
    """PNG bytes of ``image``; ``info["Description"]`` and ``text`` become PNG text chunks.

    ``compress_level`` 1 (zlib's fastest) encodes saliency pictures about three times faster than
    Pillow's default 6, for files about a tenth larger.
    """
    meta = PngImagePlugin.PngInfo()
    chunks = {"Software": "saliency"}
    if isinstance(image.info.get("Description"), str):
        chunks["Description"] = image.info["Description"]
    chunks.update(text or {})
    for key, value in chunks.items():
        meta.add_itxt(key, value)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=meta, compress_level=compress_level)
    return buffer.getvalue()


def write_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename.

    Readers (and an interrupted run) see either the old file, the complete new one, or nothing.
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:  # a file where a folder should be: name the file, not "File exists"
        blocker = next((p for p in (target.parent, *target.parent.parents) if p.exists() and not p.is_dir()),
                       target.parent)
        raise NotADirectoryError(errno.ENOTDIR, "Not a directory (a file is in the way)", str(blocker)) from None
    if target.is_dir():
        raise IsADirectoryError(errno.EISDIR, "Is a directory", str(target))
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.part")
    # os.open with 0o666 lets the umask decide the permissions, as for any new file
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return target


def save_png(image: Image.Image, path: str | os.PathLike, text: dict[str, str] | None = None) -> Path:
    """Write ``image`` as a PNG at ``path`` atomically (see :func:`write_atomic`)."""
    return write_atomic(path, to_png(image, text))


# --- helpers -----------------------------------------------------------------------------------

def _check_style(style: str) -> None:
    if style not in STYLES:
        raise InputError(f"unknown style {style!r}; choose from {', '.join(STYLES)}")


def _percentile_name(percentile: float) -> str:
    if not 0.0 < percentile <= 100.0:
        raise InputError(f"percentile must be in (0, 100], got {percentile:g}")
    if percentile == 100:
        return "maximum"
    p = f"{percentile:g}"
    suffix = "th" if p.endswith(("11", "12", "13")) else {"1": "st", "2": "nd", "3": "rd"}.get(p[-1], "th")
    return f"{p}{suffix} percentile"


def _as_maps(attribution: ArrayLike) -> np.ndarray:
    torch = sys.modules.get("torch")  # a tensor means torch is imported; numpy maps need no torch
    if torch is not None and isinstance(attribution, torch.Tensor):
        a = attribution.detach().to("cpu", torch.float32).numpy()
    else:
        a = np.asarray(attribution, dtype=np.float32)
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4 or 0 in a.shape:
        raise InputError(f"an attribution must be shaped [C, H, W] or [B, C, H, W] with no empty "
                         f"dimension, got {tuple(a.shape)}")
    if not np.isfinite(a).all():
        raise InputError("the attribution contains NaN or infinite values; check the model's output")
    return a


def _ndim(attribution: ArrayLike) -> int:
    return attribution.ndim if hasattr(attribution, "ndim") else np.ndim(attribution)


def _as_single(attribution: ArrayLike) -> ArrayLike:
    shape = tuple(attribution.shape)
    if len(shape) == 4 and shape[0] == 1:
        return attribution
    if len(shape) != 3:
        raise InputError(f"render takes one attribution [C, H, W]; got {shape} (use render_batch for batches)")
    return attribution[None]


def _scale_by_percentile(values: np.ndarray, magnitude: np.ndarray, percentile: float) -> np.ndarray:
    """``values`` divided, per sample, by the percentile of ``magnitude`` (its max if that is 0)."""
    _percentile_name(percentile)
    flat = magnitude.reshape(len(magnitude), -1)
    scale = np.percentile(flat, percentile, axis=1)
    scale = np.where(scale > 0, scale, flat.max(axis=1))
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    return values / scale.reshape(-1, *([1] * (values.ndim - 1)))


@lru_cache(maxsize=32)
def _lookup_table(cmap: str) -> np.ndarray:
    import matplotlib

    try:
        colormap = matplotlib.colormaps[cmap]
    except KeyError:
        raise InputError(f"unknown colormap {cmap!r}; use a matplotlib name such as inferno, viridis, magma or gray") from None
    return colormap(np.linspace(0.0, 1.0, 256), bytes=True)[:, :3]


def _box(prepared: "Prepared") -> tuple[int, int, int, int]:
    left, top, right, bottom = (int(round(float(v))) for v in prepared.box)
    return left, top, max(right, left + 1), max(bottom, top + 1)


def _target_size(prepared: "Prepared | None", image: Image.Image | None) -> tuple[int, int] | None:
    if prepared is not None:
        left, top, right, bottom = _box(prepared)
        return right - left, bottom - top
    return None if image is None else image.size


def _fit_to_box(picture: Image.Image, prepared: "Prepared | None") -> Image.Image:
    size = _target_size(prepared, None)
    return picture if size is None else picture.resize(size, Image.Resampling.BILINEAR)


def _heatmap_picture(values: np.ndarray, cmap: str, size: tuple[int, int] | None) -> Image.Image:
    """The heatmap as a palette picture: each pixel's 8-bit value indexes the colour map's 256 entries.

    It shows exactly the colours of :func:`colorize`, and a PNG of it is about a third the size of
    an RGB one and several times faster to encode.
    """
    if size is not None and size != (values.shape[1], values.shape[0]):
        values = np.asarray(Image.fromarray(values.astype(np.float32), "F").resize(size, Image.Resampling.BILINEAR))
    picture = Image.fromarray(_levels(values), "L").convert("P")
    picture.putpalette(_lookup_table(cmap).tobytes())
    return picture


def _overlay(heat: Image.Image, prepared: "Prepared | None", image: Image.Image | None,
             alpha: float, cmap: str) -> Image.Image:
    if prepared is not None:
        base = prepared.image.convert("RGB")
        canvas = Image.fromarray(colorize(np.zeros((base.height, base.width)), cmap), "RGB")
        canvas.paste(heat.convert("RGB"), _box(prepared)[:2])
    elif image is not None:
        base, canvas = image.convert("RGB"), heat.convert("RGB")
    else:
        raise InputError("the overlay style needs the original image (pass prepared= or image=)")
    return Image.blend(base, canvas, alpha)
