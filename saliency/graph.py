"""The autograd graph of one forward pass: where its ReLUs are, and a rule applied at them.

The model runs its own code on torch's own kernels: nothing is intercepted during the forward pass
and nothing is attached to the model. Autograd records every ReLU as a node, whatever the spelling
(``nn.ReLU`` called once or several times, in place or not, ``F.relu``, ``torch.relu_``,
``x.relu()``, ``clamp(min=0)``, ``threshold(x, 0, …)``, ``nn.ReLU6`` / ``hardtanh``), and so every
max-pool and every other activation. :func:`scan` walks the graph once from the class scores and
finds them. A backward pass with a rule hooks *this call's* ReLU nodes and unhooks them afterwards
(:func:`applying`): graphs belong to one call, so concurrent calls never see each other's rules.

A node's own backward is the forward switch, the gate ``t ↦ t · [x in the open region]``. A rule
``R = gate(pre(g))`` becomes a pre-hook computing ``pre(g)``, which the node then gates; a rule
``R = pre(g)`` that ignores the gate becomes a post-hook that replaces the node's result with ``pre(g)``.

Max-pool nodes keep autograd's own backward: it routes each gradient to the argmax indices stored
in the forward pass and adds (:func:`saliency.rules.unpool_max`), which is DeconvNet's unpooling.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import Tensor
from torch.utils.hooks import RemovableHandle

from saliency.rules import ReluRule

Node = Any  # torch.autograd.graph.Node: C++ nodes have one Python type per backward function
REENTRANT_CHECKPOINT = "reentrant checkpoint"


def _is_zero(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == 0


def _clamp_from_zero(node: Node) -> bool:
    """``clamp(x, 0)`` is a ReLU and ``clamp(x, 0, hi)`` a clipped one; any other clamp is not."""
    hi = getattr(node, "_saved_max", None)
    return _is_zero(getattr(node, "_saved_min", None)) and (hi is None or isinstance(hi, (int, float)) and hi > 0)


def _threshold_at_zero(node: Node) -> bool:
    """``threshold(x, 0, v)``: its derivative is the ReLU's switch ``[x > 0]``."""
    return _is_zero(node._saved_threshold)


def _always(node: Node) -> bool:
    return True


# Backward functions (without their numeric suffix) whose node is a ReLU, when the check agrees.
_RELUS: dict[str, Callable[[Node], bool]] = {
    "ReluBackward": _always,
    "HardtanhBackward": _always,  # ReLU6 and hardtanh: a ReLU clipped to (min_val, max_val)
    "ThresholdBackward": _threshold_at_zero,
    "ClampMinBackward": _clamp_from_zero,
    "ClampBackward": _clamp_from_zero,
}
_MAX_POOLS = ("MaxPool2DWithIndicesBackward", "MaxPool3DWithIndicesBackward",
              "AdaptiveMaxPool2DBackward", "AdaptiveMaxPool3DBackward")
# Activations with no DeconvNet / guided rule: named in the result, passed through as autograd does.
_OTHER_ACTIVATIONS = {
    "GeluBackward": "gelu", "SiluBackward": "silu", "MishBackward": "mish", "EluBackward": "elu",
    "CeluBackward": "celu", "LeakyReluBackward": "leaky_relu", "RreluWithNoiseBackward": "rrelu",
    "PreluKernelBackward": "prelu", "SoftplusBackward": "softplus", "HardswishBackward": "hardswish",
    "HardsigmoidBackward": "hardsigmoid", "LogSigmoidBackward": "logsigmoid", "GluBackward": "glu",
    "SigmoidBackward": "sigmoid", "TanhBackward": "tanh",
}
# Nodes autograd cannot see inside: code torch.compile (AOTAutograd) or TorchScript fused into one node, and
# reentrant checkpoints, which rebuild their part of the graph during the backward pass.
_OPAQUE = {"CompiledFunctionBackward": "torch.compile", "DifferentiableGraphBackward": "TorchScript",
           "CheckpointFunctionBackward": REENTRANT_CHECKPOINT}


@dataclass
class GraphScan:
    """What one forward pass ran, read off its autograd graph."""

    relus: list[Node] = field(default_factory=list)
    max_pools: list[Node] = field(default_factory=list)
    other_activations: Counter[str] = field(default_factory=Counter)
    opaque: Counter[str] = field(default_factory=Counter)

    def add(self, node: Node, category: str, detail: str) -> None:
        if category == "relu":
            if _RELUS[detail](node):
                self.relus.append(node)
        elif category == "max_pool":
            self.max_pools.append(node)
        elif category == "other":
            self.other_activations[detail] += 1
        elif category == "opaque":
            self.opaque[detail] += 1

    @property
    def relu_calls(self) -> int:
        return len(self.relus)

    @property
    def max_pool_calls(self) -> int:
        return len(self.max_pools)


_kinds: dict[type, tuple[str, str]] = {}  # node type -> (category, detail), learnt once per type


def _kind(node: Node) -> tuple[str, str]:
    kind = _kinds.get(type(node))
    if kind is None:
        name = type(node).__name__
        if name == "CppFunction":  # a C++ function without a Python type of its own (TorchScript's graphs)
            return _classify(node.name().rsplit("::", 1)[-1])
        kind = _kinds[type(node)] = _classify(name)
    return kind


def _classify(name: str) -> tuple[str, str]:
    base = name.rstrip("0123456789")
    if base in _RELUS:
        return "relu", base
    if base in _MAX_POOLS:
        return "max_pool", base
    if base in _OTHER_ACTIVATIONS:
        return "other", _OTHER_ACTIVATIONS[base]
    if base in _OPAQUE:
        return "opaque", _OPAQUE[base]
    return "", ""


def scan(*outputs: Tensor) -> GraphScan:
    """Walk the graph behind ``outputs`` once: its ReLU nodes, max-pools, other activations, opaque parts."""
    found = GraphScan()
    roots = list(dict.fromkeys(o.grad_fn for o in outputs if o.grad_fn is not None))
    seen, stack = set(roots), roots
    while stack:
        node = stack.pop()
        category, detail = _kinds.get(type(node)) or _kind(node)
        if category:
            found.add(node, category, detail)
        for parent, _ in node.next_functions:
            if parent is not None and parent not in seen:
                seen.add(parent)
                stack.append(parent)
    return found


@contextmanager
def applying(rule: ReluRule, relus: list[Node]) -> Iterator[None]:
    """While active, a backward pass through ``relus`` applies ``rule`` at each of them (one hook per node)."""
    handles: list[RemovableHandle] = []
    try:
        if rule.pre is not None:
            pre = _skipping_none(rule.pre)
            if rule.gated:  # R = gate(pre(g)): the node gates what the pre-hook hands it
                handles = [node.register_prehook(lambda g: (pre(g[0]),)) for node in relus]
            else:  # R = pre(g): the node's gated result is replaced
                handles = [node.register_hook(lambda _gated, g: (pre(g[0]),)) for node in relus]
        yield
    finally:
        for handle in handles:
            handle.remove()


def _skipping_none(pre: Callable[[Tensor], Tensor]) -> Callable[[Tensor | None], Tensor | None]:
    """A node whose output got no gradient (a custom Function returned None for it) is handed None."""
    return lambda g: None if g is None else pre(g)
