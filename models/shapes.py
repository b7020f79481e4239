"""Procedural *shapes* data set: one object on a cluttered, noisy background, with its pixel mask.

Every sample is a pure function of ``(seed, index)``, so any image can be regenerated anywhere
without storing files, and a test set drawn with another seed never overlaps the training set.
The object (one of :data:`CLASSES`) has a random position, scale, rotation and colour; the
background is a colour gradient with smooth blotches, thin distractor strokes and pixel noise, so a
classifier has to find the object rather than read a global colour. The mask marks the object's
pixels — the ground truth that localisation scores are computed against.

>>> sample = make_sample(3, seed=0)
>>> sample.image.shape, CLASSES[sample.label], bool(sample.mask.any())
((64, 64, 3), 'star', True)
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "ring", "crescent", "arrow")
"""Class names; a sample's label indexes this tuple."""
IMAGE_SIZE = 64
"""Default side length of the square images, in pixels."""
_SUPERSAMPLE = 4  # shapes are drawn at 4× and box-filtered down: anti-aliased edges, exact masks


@dataclass(frozen=True)
class Sample:
    """``image``: uint8 ``[H, W, 3]``; ``label``: index into :data:`CLASSES`; ``mask``: bool ``[H, W]``."""

    image: np.ndarray
    label: int
    mask: np.ndarray

    @property
    def name(self) -> str:
        """The class name of the object."""
        return CLASSES[self.label]

    def pil(self) -> Image.Image:
        """The image as an RGB PIL picture."""
        return Image.fromarray(self.image, mode="RGB")

    def mask_pil(self) -> Image.Image:
        """The mask as a black-and-white (mode ``L``, 0/255) PIL picture."""
        return Image.fromarray(self.mask.astype(np.uint8) * 255, mode="L")


def make_sample(index: int, seed: int = 0, size: int = IMAGE_SIZE) -> Sample:
    """Sample number ``index`` of the data set drawn with ``seed``; labels cycle through the classes."""
    rng = np.random.default_rng([seed, index, size])
    label = index % len(CLASSES)
    background = _background(rng, size)
    alpha = _object_alpha(rng, CLASSES[label], size)
    colour = _object_colour(rng, background, alpha)
    shading = 1.0 + rng.uniform(-0.12, 0.12) * np.linspace(-1.0, 1.0, size)[None, :, None]
    image = background * (1.0 - alpha[..., None]) + colour * shading * alpha[..., None]
    image += rng.normal(0.0, rng.uniform(0.02, 0.07), image.shape)
    pixels = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
    return Sample(image=pixels, label=label, mask=alpha >= 0.5)


def make_batch(count: int, seed: int = 0, start: int = 0,
               size: int = IMAGE_SIZE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Samples ``start .. start+count-1``: images uint8 ``[N, H, W, 3]``, labels int64 ``[N]``, masks bool ``[N, H, W]``."""
    samples = [make_sample(i, seed=seed, size=size) for i in range(start, start + count)]
    images = np.stack([s.image for s in samples]) if samples else np.zeros((0, size, size, 3), np.uint8)
    labels = np.array([s.label for s in samples], dtype=np.int64)
    masks = np.stack([s.mask for s in samples]) if samples else np.zeros((0, size, size), bool)
    return images, labels, masks


def iter_batches(batch_size: int, seed: int = 0, start: int = 0, stop: int | None = None,
                 size: int = IMAGE_SIZE) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Consecutive :func:`make_batch` batches from ``start`` until ``stop`` (endless when ``None``)."""
    index = start
    while stop is None or index < stop:
        count = batch_size if stop is None else min(batch_size, stop - index)
        yield make_batch(count, seed=seed, start=index, size=size)
        index += count


# --- drawing ---------------------------------------------------------------------------------

def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A float ``[H, W, 3]`` clutter: gradient, smooth blotches and thin distractor strokes."""
    corners = rng.uniform(0.0, 1.0, (2, 2, 3))
    t = np.linspace(0.0, 1.0, size)
    ty, tx = t[:, None, None], t[None, :, None]
    image = ((1 - ty) * ((1 - tx) * corners[0, 0] + tx * corners[0, 1])
             + ty * ((1 - tx) * corners[1, 0] + tx * corners[1, 1]))
    coarse = rng.normal(0.0, rng.uniform(0.05, 0.15), (5, 5, 3)).astype(np.float32)
    image = image + _upsample(coarse, size)
    strokes = Image.new("RGB", (size, size))
    stroke_mask = Image.new("L", (size, size))
    draw, draw_mask = ImageDraw.Draw(strokes), ImageDraw.Draw(stroke_mask)
    for _ in range(rng.integers(3, 9)):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        width = int(rng.integers(1, 3))
        if rng.random() < 0.6:
            points = [tuple(float(v) for v in rng.uniform(-4, size + 4, 2)) for _ in range(rng.integers(2, 4))]
            draw.line(points, fill=colour, width=width)
            draw_mask.line(points, fill=255, width=width)
        else:
            x0, y0 = rng.uniform(-size / 4, size, 2)
            extent = rng.uniform(size / 6, size / 2)
            arc = [float(x0), float(y0), float(x0 + extent), float(y0 + extent)]
            start = float(rng.uniform(0, 360))
            end = start + float(rng.uniform(60, 200))
            draw.arc(arc, start, end, fill=colour, width=width)
            draw_mask.arc(arc, start, end, fill=255, width=width)
    weight = np.asarray(stroke_mask, dtype=np.float64)[..., None] / 255.0
    image = image * (1.0 - weight) + np.asarray(strokes, dtype=np.float64) / 255.0 * weight
    return np.clip(image, 0.0, 1.0)


def _upsample(grid: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling of a small ``[h, w, 3]`` float grid to ``[size, size, 3]``."""
    h, w, _ = grid.shape
    ys, xs = np.linspace(0, h - 1, size), np.linspace(0, w - 1, size)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x1] * fx
    bottom = grid[y1][:, x0] * (1 - fx) + grid[y1][:, x1] * fx
    return top * (1 - fy) + bottom * fy


def _object_colour(rng: np.random.Generator, background: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """A colour that stands out from the background under the object (distance ≥ 0.45 in RGB)."""
    weight = alpha[..., None]
    under = (background * weight).sum(axis=(0, 1)) / max(float(weight.sum()), 1e-6)
    best, best_distance = None, -1.0
    for _ in range(12):
        colour = rng.uniform(0.0, 1.0, 3)
        distance = float(np.linalg.norm(colour - under))
        if distance >= 0.45:
            return colour
        if distance > best_distance:
            best, best_distance = colour, distance
    return np.where(under > 0.5, 0.0, 1.0) if best_distance < 0.3 else best


def _object_alpha(rng: np.random.Generator, name: str, size: int) -> np.ndarray:
    """Float ``[H, W]`` coverage in [0, 1] of one randomly placed, scaled and rotated object."""
    radius = rng.uniform(0.16, 0.3) * size  # the shape fits in a circle of this radius
    margin = radius + 1.0
    cx, cy = rng.uniform(margin, size - margin, 2)
    angle = rng.uniform(0.0, 2.0 * np.pi)
    big = size * _SUPERSAMPLE
    canvas = Image.new("L", (big, big))
    draw = ImageDraw.Draw(canvas)

    def place(points: np.ndarray) -> list[tuple[float, float]]:
        rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        xy = points @ rotation.T * radius + (cx, cy)
        return [(float(x) * _SUPERSAMPLE, float(y) * _SUPERSAMPLE) for x, y in xy]

    for points, fill in _OUTLINES[name](rng):
        draw.polygon(place(points), fill=fill)
    small = canvas.resize((size, size), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float64) / 255.0


def _polygon(n: int, radius: float = 1.0, phase: float = 0.0) -> np.ndarray:
    angles = phase + np.arange(n) * 2.0 * np.pi / n
    return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _circle(rng):
    return [(_polygon(64), 255)]


def _square(rng):
    return [(_polygon(4, 1.0, np.pi / 4), 255)]


def _triangle(rng):
    return [(_polygon(3, 1.0, -np.pi / 2), 255)]


def _star(rng):
    outer, inner = _polygon(5, 1.0, -np.pi / 2), _polygon(5, rng.uniform(0.38, 0.5), -np.pi / 2 + np.pi / 5)
    return [(np.stack([outer, inner], axis=1).reshape(-1, 2), 255)]


def _cross(rng):
    a = rng.uniform(0.22, 0.32)  # half the arm width
    half = 1.0 / np.sqrt(1.0 + a * a)  # arm tips stay within the unit circle
    return [(np.array([[-a, -half], [a, -half], [a, -a], [half, -a], [half, a], [a, a], [a, half],
                       [-a, half], [-a, a], [-half, a], [-half, -a], [-a, -a]]), 255)]


def _ring(rng):
    return [(_polygon(64), 255), (_polygon(64, rng.uniform(0.5, 0.62)), 0)]


def _crescent(rng):
    shift = rng.uniform(0.35, 0.5)
    return [(_polygon(64), 255), (_polygon(64, 0.9) + (shift, 0.0), 0)]


def _arrow(rng):
    shaft = rng.uniform(0.18, 0.26)
    return [(np.array([[-0.95, -shaft], [0.15, -shaft], [0.15, -0.62], [0.98, 0.0], [0.15, 0.62],
                       [0.15, shaft], [-0.95, shaft]]), 255)]


_OUTLINES = {"circle": _circle, "square": _square, "triangle": _triangle, "star": _star,
             "cross": _cross, "ring": _ring, "crescent": _crescent, "arrow": _arrow}
assert tuple(_OUTLINES) == CLASSES
