"""Deletion and insertion curves (Petsiuk, Das & Saenko, 2018, "RISE", BMVC).

Pixels are taken in the order of the map, most salient first. **Deletion** replaces more and more
of them with a neutral value (0 in the model's normalised input space: the data set's mean colour)
and follows the probability of the explained class: a faithful map makes it fall fast (low area
under the curve). **Insertion** starts from a blurred copy of the image and puts the original
pixels back in the same order: the probability should rise fast (high area). A random pixel order
is the baseline both ways. Perturbed images go through the model in batches.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from saliency.evaluation.modes import frozen
from saliency.evaluation.similarity import magnitude, nanmean

MODES = ("deletion", "insertion")
BLUR_KERNEL, BLUR_SIGMA = 11, 5.0
"""The insertion start image: Gaussian blur as in the RISE code (kernel 11, σ = 5 pixels)."""


def pixel_order(saliency: np.ndarray | Tensor) -> np.ndarray:
    """Flat pixel indices of a 2-D map, most salient first (ties keep row-major order)."""
    s = saliency.detach().cpu().numpy() if isinstance(saliency, Tensor) else np.asarray(saliency)
    return np.argsort(-s.ravel(), kind="stable")


def blur(image: Tensor, kernel: int = BLUR_KERNEL, sigma: float = BLUR_SIGMA) -> Tensor:
    """Gaussian blur of ``[C, H, W]`` (or ``[B, C, H, W]``), edges replicated."""
    x = image[None] if image.dim() == 3 else image
    offsets = torch.arange(kernel, dtype=x.dtype, device=x.device) - kernel // 2
    g = torch.exp(-offsets ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    channels = x.shape[1]
    pad = kernel // 2
    x = nn.functional.pad(x, (pad, pad, pad, pad), mode="replicate")
    x = nn.functional.conv2d(x, g.view(1, 1, 1, -1).expand(channels, 1, 1, kernel), groups=channels)
    x = nn.functional.conv2d(x, g.view(1, 1, -1, 1).expand(channels, 1, kernel, 1), groups=channels)
    return x[0] if image.dim() == 3 else x


def perturbation_curve(model: nn.Module, image: Tensor, order: np.ndarray, target: int, mode: str = "deletion",
                       steps: int = 32, batch_size: int = 64) -> np.ndarray:
    """Probability of ``target`` as pixels ``order[:k·n/steps]`` of ``image`` ``[C, H, W]`` are
    deleted (set to 0) or inserted (into a blurred copy), for ``k = 0 .. steps``.

    Returns ``steps + 1`` probabilities; the first is the intact (deletion) or blurred (insertion) image.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    channels, height, width = image.shape
    pixels = height * width
    if len(order) != pixels:
        raise ValueError(f"order has {len(order)} indices for a {height}×{width} image")
    rank = torch.empty(pixels, dtype=torch.long)
    rank[torch.as_tensor(np.asarray(order), dtype=torch.long)] = torch.arange(pixels)
    counts = torch.round(torch.linspace(0, pixels, steps + 1)).long()
    param = next(model.parameters(), None)
    device = param.device if param is not None else image.device
    image = image.to(device)
    substrate = torch.zeros_like(image) if mode == "deletion" else blur(image)
    start, end = (image, substrate) if mode == "deletion" else (substrate, image)
    rank = rank.view(1, 1, height, width).to(device)
    probabilities = []
    with frozen(model):
        for chunk in counts.split(batch_size):
            changed = rank < chunk.to(device).view(-1, 1, 1, 1)      # [b, 1, H, W]
            batch = torch.where(changed, end, start)
            probabilities.append(model(batch).float().softmax(dim=1)[:, target].cpu())
    return torch.cat(probabilities).numpy().astype(np.float64)


def deletion_curve(model: nn.Module, image: Tensor, saliency: np.ndarray | Tensor, target: int, steps: int = 32,
                   batch_size: int = 64) -> np.ndarray:
    """:func:`perturbation_curve` deleting pixels in the order of the 2-D ``saliency`` map."""
    return perturbation_curve(model, image, pixel_order(saliency), target, "deletion", steps, batch_size)


def insertion_curve(model: nn.Module, image: Tensor, saliency: np.ndarray | Tensor, target: int, steps: int = 32,
                    batch_size: int = 64) -> np.ndarray:
    """:func:`perturbation_curve` inserting pixels in the order of the 2-D ``saliency`` map."""
    return perturbation_curve(model, image, pixel_order(saliency), target, "insertion", steps, batch_size)


def auc(curve: np.ndarray) -> float:
    """Area under a curve sampled at equal steps over [0, 1] (trapezoids)."""
    c = np.asarray(curve, dtype=np.float64)
    return float((c.sum() - (c[0] + c[-1]) / 2) / (len(c) - 1)) if len(c) > 1 else float(c[0])


@dataclass
class FaithfulnessScores:
    """Mean deletion and insertion curves and their mean AUC, per method and for a random order."""

    steps: int
    curves: dict[str, dict[str, list[float]]]  # mode -> method -> mean curve
    auc: dict[str, dict[str, float]]           # mode -> method -> mean AUC
    n: int

    def to_dict(self) -> dict:
        return {"fractions": list(np.linspace(0.0, 1.0, self.steps + 1)), "curves": self.curves,
                "auc": self.auc, "n_images": self.n, "baselines": {"random": "pixels in a random order"},
                "better": {"deletion": "lower", "insertion": "higher"}}


def faithfulness_scores(model: nn.Module, inputs: Tensor, maps: Mapping[str, Tensor], targets: Tensor | list[int],
                 steps: int = 32, batch_size: int = 64, seed: int = 0,
                 on_step: Callable[[int], object] | None = None) -> FaithfulnessScores:
    """Deletion and insertion curves of every method's maps ``[N, C, H, W]`` for ``inputs`` and the
    explained classes ``targets``, plus a random pixel order. ``on_step(1)`` after each image."""
    rng = np.random.default_rng(seed)
    n, _, height, width = inputs.shape
    names = list(maps) + ["random"]
    collected = {mode: {name: [] for name in names} for mode in MODES}
    for i in range(n):
        orders = {name: pixel_order(magnitude(maps[name][i])) for name in maps}
        orders["random"] = rng.permutation(height * width)
        for name, order in orders.items():
            for mode in MODES:
                collected[mode][name].append(perturbation_curve(model, inputs[i], order, int(targets[i]), mode,
                                                                steps, batch_size))
        if on_step is not None:
            on_step(1)
    curves = {mode: {name: np.mean(found, axis=0).tolist() for name, found in by.items()}
              for mode, by in collected.items()}
    areas = {mode: {name: nanmean([auc(c) for c in found]) for name, found in by.items()}
             for mode, by in collected.items()}
    return FaithfulnessScores(steps=steps, curves=curves, auc=areas, n=n)
