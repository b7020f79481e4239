"""Methods that average plain gradients over many inputs: SmoothGrad and Integrated Gradients."""

from __future__ import annotations

import hashlib
from typing import Callable

import torch
from torch import Tensor

from saliency.errors import OptionError
from saliency.passes import ForwardPass, input_gradients, unit_values
from saliency.units import Placed

Progress = Callable[[int, int], None]
QUADRATURES = ("gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle")


def smoothgrad(run: ForwardPass, samples: int, noise: float, seed: int, batch_size: int,
               progress: Progress) -> Tensor:
    """Smilkov et al. (2017): ``R = 1/n Σ_i ∂y/∂x |_(x + ε_i)``, ``ε_i ~ N(0, σ²)``, ``σ = noise · (max x − min x)``.

    ``σ`` is set per sample from its own value range. Each sample's noise comes from a private
    generator seeded with ``seed`` and that sample's own values (:func:`noise_seed`), one draw per
    noisy copy, and the copies' gradients are summed in order: a sample's map depends neither on the
    other samples in the batch nor on ``batch_size``, and is reproducible while other threads draw
    random numbers.
    """
    x = run.leaf.detach()
    flat = x.flatten(1)
    sigma = (noise * (flat.amax(1) - flat.amin(1))).view(-1, *([1] * (x.dim() - 1)))
    generators = [torch.Generator(device=x.device).manual_seed(noise_seed(seed, row)) for row in x]
    per_batch = max(1, batch_size // len(x))
    total = torch.zeros_like(x)
    done = 0
    while done < samples:
        n = min(per_batch, samples - done)
        eps = torch.stack([torch.stack([torch.randn(x.shape[1:], generator=g, device=x.device, dtype=x.dtype)
                                        for g in generators]) for _ in range(n)]) * sigma
        noisy = (x.unsqueeze(0) + eps).flatten(0, 1)
        for gradient in input_gradients(run.model, noisy, run.copies_target(n)).view(n, *x.shape):
            total += gradient
        done += n
        progress(done, samples)
    return total / samples


def noise_seed(seed: int, sample: Tensor) -> int:
    """The seed of one sample's noise: ``seed`` mixed with a hash of the sample's own values (64 bits)."""
    digest = hashlib.blake2b(sample.detach().cpu().contiguous().numpy().tobytes(),
                             key=str(seed).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def integrated_gradients(run: ForwardPass, steps: int, baseline: float, quadrature: str, batch_size: int,
                         progress: Progress) -> Tensor:
    """Sundararajan et al. (2017): ``R = (x − x') · ∫₀¹ ∂y/∂x |_(x' + α(x − x')) dα``, ``x'`` = ``baseline``.

    Delegated to Captum's ``IntegratedGradients`` (path, quadrature, batching): it only needs plain
    gradients of the model's forward function, and adds no hooks, so it is safe across threads.
    """
    if quadrature not in QUADRATURES:
        raise OptionError(f"option 'quadrature' must be one of {', '.join(QUADRATURES)}, got {quadrature!r}")
    from captum.attr import IntegratedGradients  # imported here: Captum takes longer to import than a demo run

    x = run.leaf.detach()
    calls = -(-steps * len(x) // batch_size)
    done = 0

    unit = run.unit  # a unit: the forward function is its value [N, 1], at the positions placed on x itself
    index = () if unit is None or unit.index is None else (unit.index,)

    def forward(batch: Tensor, *at: Tensor) -> Tensor:
        nonlocal done
        copy = batch.clone()  # a model may work in place on its input
        out = run.model(copy) if unit is None else unit_values(run.model, copy, Placed(unit.unit, *at or (None,)))[:, None]
        done += 1
        progress(min(done, calls), calls)
        return out

    ig = IntegratedGradients(forward)
    return ig.attribute(x, baselines=baseline, target=run.targets if unit is None else 0, n_steps=steps,
                        method=quadrature, internal_batch_size=batch_size,
                        additional_forward_args=index or None).detach()
