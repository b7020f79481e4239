"""Methods that average plain gradients over many inputs: SmoothGrad and Integrated Gradients."""

from __future__ import annotations

from typing import Callable

import torch
from captum.attr import IntegratedGradients
from torch import Tensor

from saliency.errors import OptionError
from saliency.passes import ForwardPass, input_gradients

Progress = Callable[[int, int], None]
QUADRATURES = ("gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle")


def smoothgrad(run: ForwardPass, samples: int, noise: float, seed: int, batch_size: int,
               progress: Progress) -> Tensor:
    """Smilkov et al. (2017): ``R = 1/n Σ_i ∂y/∂x |_(x + ε_i)``, ``ε_i ~ N(0, σ²)``, ``σ = noise · (max x − min x)``.

    ``σ`` is set per sample from its own value range; the noise comes from a private generator
    seeded with ``seed``, so a result is reproducible even while other threads draw random numbers.
    """
    x = run.leaf.detach()
    flat = x.flatten(1)
    sigma = (noise * (flat.amax(1) - flat.amin(1))).view(1, -1, *([1] * (x.dim() - 1)))
    generator = torch.Generator(device=x.device).manual_seed(seed)
    per_batch = max(1, batch_size // len(x))
    total = torch.zeros_like(x)
    targets = run.targets.cpu()
    done = 0
    while done < samples:
        n = min(per_batch, samples - done)
        eps = torch.randn((n, *x.shape), generator=generator, device=x.device, dtype=x.dtype) * sigma
        noisy = (x.unsqueeze(0) + eps).flatten(0, 1)
        total += input_gradients(run.model, noisy, targets.repeat(n)).view(n, *x.shape).sum(0)
        done += n
        progress(done, samples)
    return total / samples


def integrated_gradients(run: ForwardPass, steps: int, baseline: float, quadrature: str, batch_size: int,
                         progress: Progress) -> Tensor:
    """Sundararajan et al. (2017): ``R = (x − x') · ∫₀¹ ∂y/∂x |_(x' + α(x − x')) dα``, ``x'`` = ``baseline``.

    Delegated to Captum's ``IntegratedGradients`` (path, quadrature, batching): it only needs plain
    gradients of the model's forward function, and adds no hooks, so it is safe across threads.
    """
    if quadrature not in QUADRATURES:
        raise OptionError(f"option 'quadrature' must be one of {', '.join(QUADRATURES)}, got {quadrature!r}")
    x = run.leaf.detach()
    calls = -(-steps * len(x) // batch_size)
    done = 0

    def forward(batch: Tensor) -> Tensor:
        nonlocal done
        out = run.model(batch.clone())  # a model may work in place on its input
        done += 1
        progress(min(done, calls), calls)
        return out

    ig = IntegratedGradients(forward)
    return ig.attribute(x, baselines=baseline, target=run.targets, n_steps=steps, method=quadrature,
                        internal_batch_size=batch_size).detach()
