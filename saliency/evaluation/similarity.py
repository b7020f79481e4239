"""How alike two saliency maps are: rank correlation, Pearson correlation and SSIM.

Maps are reduced to 2-D before comparing: :func:`magnitude` (max over channels of ``|a|``, the
usual heatmap) or :func:`signed` (sum over channels, keeping the sign).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

from saliency.compare import magnitude as _magnitude
from saliency.compare import spearman

ArrayLike = Tensor | np.ndarray

METRICS: dict[str, str] = {
    "spearman_abs": "Spearman rank correlation of the |map|s",
    "spearman_signed": "Spearman rank correlation of the signed maps (sum over channels)",
    "ssim": "SSIM of the |map|s, each scaled to [0, 1]",
}
"""The scores :func:`map_similarity` returns, by key."""

__all__ = ["METRICS", "magnitude", "map_similarity", "nanmean", "nanstd", "noise_baseline", "normalise", "pearson",
           "signed", "spearman", "ssim"]


def magnitude(attribution: ArrayLike) -> np.ndarray:
    """``[C, H, W]`` → ``[H, W]``: max over channels of ``|attribution|`` (float64)."""
    return _magnitude(attribution).astype(np.float64)


def signed(attribution: ArrayLike) -> np.ndarray:
    """``[C, H, W]`` → ``[H, W]``: sum over channels, sign kept (float64)."""
    return _numpy(attribution).sum(axis=0)


def normalise(values: ArrayLike) -> np.ndarray:
    """Non-negative ``values`` divided by their maximum (all zeros stay zeros)."""
    a = _numpy(values)
    top = float(a.max()) if a.size else 0.0
    return a / top if top > 0 else np.zeros_like(a)


def pearson(a: ArrayLike, b: ArrayLike) -> float:
    """Pearson correlation of two same-sized arrays; ``nan`` when either is constant."""
    x, y = np.ravel(_numpy(a)), np.ravel(_numpy(b))
    if x.size != y.size:
        raise ValueError(f"cannot correlate arrays of {x.size} and {y.size} values")
    x, y = x - x.mean(), y - y.mean()
    norm = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / norm) if norm > 0 else float("nan")


def ssim(a: ArrayLike, b: ArrayLike, data_range: float | None = None, window: int = 11,
         sigma: float = 1.5) -> float:
    """Structural similarity of two 2-D arrays (Wang, Bovik, Sheikh & Simoncelli, 2004).

    A Gaussian window (``window`` pixels, ``sigma``) slides over the valid region; the SSIM index
    is the mean of the local ``l·c·s`` terms with ``K1 = 0.01``, ``K2 = 0.03``. ``data_range``
    defaults to the larger value range of the two arrays (1 for maps scaled by :func:`normalise`).
    Identical arrays give 1; the index falls towards 0 (or below) as structure differs.
    """
    x, y = _numpy(a), _numpy(b)
    if x.shape != y.shape or x.ndim != 2:
        raise ValueError(f"ssim compares two 2-D arrays of one shape, got {x.shape} and {y.shape}")
    if data_range is None:
        data_range = max(float(np.ptp(x)), float(np.ptp(y))) or 1.0
    size = min(window, *x.shape)
    size -= 1 - size % 2  # odd
    offsets = np.arange(size) - size // 2
    g = np.exp(-offsets ** 2 / (2.0 * sigma ** 2))
    g /= g.sum()
    kernel = torch.from_numpy(np.outer(g, g))[None, None]
    stack = torch.from_numpy(np.stack([x, y, x * x, y * y, x * y]))[:, None]
    mx, my, mxx, myy, mxy = torch.nn.functional.conv2d(stack, kernel)[:, 0].numpy()
    vx, vy, cov = mxx - mx * mx, myy - my * my, mxy - mx * my
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    index = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(index.mean())


def map_similarity(reference: Tensor | np.ndarray, other: Tensor | np.ndarray) -> dict[str, float]:
    """Every :data:`METRICS` score of two ``[C, H, W]`` attributions."""
    ref_abs, other_abs = magnitude(reference), magnitude(other)
    return {
        "spearman_abs": spearman(ref_abs, other_abs),
        "spearman_signed": spearman(signed(reference), signed(other)),
        "ssim": ssim(normalise(ref_abs), normalise(other_abs), data_range=1.0),
    }


def noise_baseline(references: Sequence[Tensor], seed: int = 0) -> dict[str, float]:
    """The :data:`METRICS` between each reference map and noise of its shape (uniform for
    ``|map|``, centred for the signed map), averaged."""
    rng = np.random.default_rng(seed)
    scores = [map_similarity(ref, rng.uniform(-1.0, 1.0, tuple(ref.shape))) for ref in references]
    return {key: nanmean(s[key] for s in scores) for key in METRICS}


def _numpy(values: ArrayLike) -> np.ndarray:
    if isinstance(values, Tensor):
        return values.detach().cpu().double().numpy()
    return np.asarray(values, dtype=np.float64)


def nanmean(values: Iterable[float]) -> float:
    """Mean of the values that are not ``nan`` (``nan`` when none is), without warnings."""
    a = np.asarray(list(values), dtype=np.float64)
    a = a[~np.isnan(a)]
    return float(a.mean()) if a.size else float("nan")


def nanstd(values: Iterable[float]) -> float:
    """Standard deviation of the values that are not ``nan`` (``nan`` when none is)."""
    a = np.asarray(list(values), dtype=np.float64)
    a = a[~np.isnan(a)]
    return float(a.std()) if a.size else float("nan")
