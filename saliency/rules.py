"""Backward rules, each a small pure function of the gradient.

A ReLU rule maps the gradient ``g`` arriving at a ReLU's output to the gradient ``R`` it passes to
the ReLU's input. ``gate`` is the ReLU's switch from the forward pass, ``t ↦ t · [x > 0]`` for a
ReLU, ``t ↦ t · [lo < x < hi]`` for a clipped ReLU (ReLU6, hardtanh). Every rule here has the form
``R = gate(pre(g))`` or ``R = pre(g)``: what it does to ``g``, and whether the switch then applies.
Called with a gate, a rule computes its equation (the gates below state the switch, for checking);
in a backward pass :func:`saliency.graph.applying` uses ``pre`` and ``gated``, and the gate is the
ReLU node's own backward.

The pooling rule is shared by every method: max-pool backward is unpooling with the switches (the
argmax indices) stored in the forward pass, scatter-*added* so that an input that wins several
overlapping windows receives every window's gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # the rules are plain data until a backward pass calls them: importing this needs no torch
    import torch
    from torch import Tensor

Gate = Callable[["Tensor"], "Tensor"]
"""``gate(t) = t · [x in the open region]``: the forward pass's switch, applied to a gradient."""


def relu_gate(x: Tensor) -> Gate:
    """The ReLU's switch: ``t ↦ t · [x > 0]``, computed as autograd's own ReLU backward computes it."""
    import torch

    return lambda t: torch.ops.aten.threshold_backward(t, x, 0)


def clipped_gate(x: Tensor, lo: float, hi: float) -> Gate:
    """A clipped ReLU's switch (ReLU6, hardtanh): ``t ↦ t · [lo < x < hi]``."""
    import torch

    return lambda t: torch.where((x > lo) & (x < hi), t, 0.0)


def positive(g: Tensor) -> Tensor:
    """``max(g, 0)``."""
    return g.clamp(min=0)


@dataclass(frozen=True)
class ReluRule:
    """``R = gate(pre(g))`` if ``gated``, else ``R = pre(g)``; ``pre=None`` leaves ``g`` as it is."""

    name: str
    pre: Callable[[Tensor], Tensor] | None
    gated: bool

    def __call__(self, g: Tensor, gate: Gate) -> Tensor:
        r = g if self.pre is None else self.pre(g)
        return gate(r) if self.gated else r


vanilla = ReluRule("vanilla", pre=None, gated=True)
"""Gradient (Simonyan et al., 2013): ``R = g · [x > 0]``."""

deconvnet = ReluRule("deconvnet", pre=positive, gated=False)
"""DeconvNet (Zeiler & Fergus, 2014): ``R = max(g, 0)``; the forward sign is ignored."""

guided = ReluRule("guided", pre=positive, gated=True)
"""Guided backpropagation (Springenberg et al., 2014): ``R = max(g, 0) · [x > 0]``."""


def unpool_max(g: Tensor, switches: Tensor, input_shape: torch.Size, dims: int) -> Tensor:
    """Max-pool backward: ``R[switches[j]] += g[j]`` for every pooled output ``j``.

    ``switches`` are the flat per-plane argmax indices stored by the forward pass
    (``return_indices=True``), ``input_shape`` is the pooled tensor's shape and ``dims`` the number of
    pooled (spatial) dimensions: 1, 2 or 3. Leading dimensions (batch, channels) are planes.
    """
    import torch

    planes = input_shape[: len(input_shape) - dims]
    r = g.new_zeros((*planes, torch.Size(input_shape[-dims:]).numel()))
    r.scatter_add_(-1, switches.flatten(start_dim=len(planes)), g.flatten(start_dim=len(planes)))
    return r.reshape(input_shape)
