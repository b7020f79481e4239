"""Does the map point at the object? Scores against ground-truth object masks.

- :func:`pointing_game` (Zhang, Lin, Brandt, Shen & Sclaroff, 2016, "Top-down Neural Attention by
  Excitation Backprop"): a hit when the map's maximum lies on the object, or within ``tolerance``
  pixels of it (they used 15 pixels at 224 × 224).
- :func:`relevance_mass`: the share of the map's total ``|attribution|`` that falls inside the mask
  (the "relevance mass accuracy" of Arras, Osman & Samek, 2022, CLEVR-XAI).

Two baselines say what the numbers are worth: :func:`centre_map` (a Gaussian bump in the middle of
the image, which wins the pointing game whenever the object covers the centre) and
:func:`random_map` (uniform noise, whose relevance mass is about the mask's share of the image).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from torch import Tensor

from saliency.evaluation.similarity import magnitude, nanmean

TOLERANCE_AT_224 = 15
"""Zhang et al.'s pointing-game tolerance in pixels, for 224-pixel inputs."""
BASELINES: dict[str, str] = {
    "centre": "a Gaussian bump at the image centre (σ = a quarter of the side)",
    "random": "uniform noise",
}
"""The reference maps each localisation table shows below the methods."""


def default_tolerance(side: int) -> int:
    """Zhang et al.'s 15 pixels scaled from 224 to an input ``side`` pixels wide (at least 1)."""
    return max(1, round(TOLERANCE_AT_224 * side / 224))


def pointing_game(saliency: np.ndarray, mask: np.ndarray, tolerance: float = 0.0) -> bool:
    """Whether the maximum of the 2-D ``saliency`` lies within ``tolerance`` pixels of the mask.

    Ties go to the first maximum in row-major order. An empty mask is always a miss.
    """
    s, m = np.asarray(saliency), np.asarray(mask, dtype=bool)
    if s.shape != m.shape:
        raise ValueError(f"saliency {s.shape} and mask {m.shape} must have one shape")
    if not m.any():
        return False
    y, x = np.unravel_index(int(np.argmax(s)), s.shape)
    if m[y, x]:
        return True
    ys, xs = np.nonzero(m)
    return bool(np.hypot(ys - y, xs - x).min() <= tolerance)


def relevance_mass(saliency: np.ndarray, mask: np.ndarray) -> float:
    """Share of the non-negative 2-D ``saliency`` inside the mask (``nan`` for an all-zero map)."""
    s, m = np.asarray(saliency, dtype=np.float64), np.asarray(mask, dtype=bool)
    if s.shape != m.shape:
        raise ValueError(f"saliency {s.shape} and mask {m.shape} must have one shape")
    if (s < 0).any():
        raise ValueError("relevance mass needs a non-negative map; pass magnitude(attribution)")
    total = float(s.sum())
    return float(s[m].sum()) / total if total > 0 else float("nan")


def centre_map(height: int, width: int) -> np.ndarray:
    """A Gaussian bump peaked at the centre, σ = a quarter of the shorter side."""
    ys, xs = np.arange(height) - (height - 1) / 2, np.arange(width) - (width - 1) / 2
    sigma = min(height, width) / 4
    return np.exp(-(ys[:, None] ** 2 + xs[None, :] ** 2) / (2 * sigma ** 2))


def random_map(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Uniform noise in [0, 1)."""
    return rng.uniform(0.0, 1.0, (height, width))


@dataclass
class LocalizationScores:
    """Per method (and baseline): pointing-game hit rate and mean relevance mass, over ``n`` images.

    ``mask_fraction``: the masks' mean share of the image — the relevance mass a map spread evenly
    would get.
    """

    pointing: dict[str, float]
    mass: dict[str, float]
    tolerance: float
    n: int
    mask_fraction: float
    baselines: tuple[str, ...] = tuple(BASELINES)

    def to_dict(self) -> dict:
        return {"pointing_game": self.pointing, "relevance_mass": self.mass, "tolerance_px": self.tolerance,
                "n_images": self.n, "mask_fraction": self.mask_fraction,
                "baselines": {k: BASELINES[k] for k in self.baselines}}


def localization_scores(maps: Mapping[str, Tensor], masks: np.ndarray, tolerance: float | None = None,
                 seed: int = 0) -> LocalizationScores:
    """Pointing game and relevance mass of each method's maps ``[N, C, H, W]`` against ``masks``
    (bool ``[N, H, W]``), with the centre and random baselines. ``tolerance`` defaults to
    :func:`default_tolerance` of the map width."""
    masks = np.asarray(masks, dtype=bool)
    n, height, width = masks.shape
    tol = default_tolerance(width) if tolerance is None else tolerance
    rng = np.random.default_rng(seed)
    candidates: dict[str, list[np.ndarray]] = {
        name: [magnitude(batch[i]) for i in range(n)] for name, batch in maps.items()}
    candidates["centre"] = [centre_map(height, width)] * n
    candidates["random"] = [random_map(height, width, rng) for _ in range(n)]
    pointing = {name: float(np.mean([pointing_game(s, m, tol) for s, m in zip(found, masks)]))
                for name, found in candidates.items()}
    mass = {name: nanmean(relevance_mass(s, m) for s, m in zip(found, masks))
            for name, found in candidates.items()}
    return LocalizationScores(pointing=pointing, mass=mass, tolerance=float(tol), n=n,
                              mask_fraction=float(masks.mean()))
