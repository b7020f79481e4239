"""Interception: route every ReLU and max-pool call through our backward rules.

A ``TorchFunctionMode`` sees each torch call made while it is active, whatever its spelling
(``nn.ReLU``, ``F.relu``, ``torch.relu_``, ``x.relu()``, ``nn.MaxPool2d``, ``F.max_pool2d`` …).
Modes live on a per-thread stack, so an explanation running in one thread never changes what
another thread computes, and nothing is attached to the model: no hooks, no swapped modules.

Each intercepted ReLU becomes a :class:`_GatedReLU` node that stores its forward gate; which rule
its backward applies is read from a :class:`RuleSelector` owned by one ``explain`` call, so one
forward pass serves several methods (autograd may run backward on other threads, e.g. on CUDA,
which is why the choice lives on an object the graph holds and not in thread-local state).
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

from saliency import rules

ReluRule = Callable[[Tensor, rules.Gate], Tensor]


class RuleSelector:
    """The ReLU rule the next backward pass applies; one per ``explain`` call."""

    def __init__(self) -> None:
        self.rule: ReluRule = rules.vanilla


class _GatedReLU(torch.autograd.Function):
    """``y = clamp(x, lo, hi)``; backward applies ``selector.rule(g, gate)``, gate = open region.

    The gate is read off the output (``lo < y < hi`` exactly where ``lo < x < hi``), which is what
    autograd's own ReLU saves, so memory use and in-place semantics match the stock op.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, lo: float, hi: float | None, selector: RuleSelector,
                inplace: bool) -> Tensor:
        if inplace:
            y = torch.relu_(x) if hi is None else x.clamp_(min=lo, max=hi)
            ctx.mark_dirty(x)
        else:
            y = torch.relu(x) if hi is None else x.clamp(min=lo, max=hi)
        ctx.save_for_backward(y)
        ctx.lo, ctx.hi, ctx.selector = lo, hi, selector
        return y

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        (y,) = ctx.saved_tensors
        gate = rules.relu_gate(y) if ctx.hi is None else rules.clipped_gate(y, ctx.lo, ctx.hi)
        return ctx.selector.rule(g, gate), None, None, None, None


class _MaxPoolWithSwitches(torch.autograd.Function):
    """Max pooling whose backward is :func:`rules.unpool_max` over the stored switches."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, dims: int, kernel: Any, stride: Any, padding: Any,
                dilation: Any, ceil_mode: bool) -> tuple[Tensor, Tensor]:
        pool = _POOL_WITH_INDICES[dims]
        y, switches = pool(x, kernel, stride, padding, dilation, ceil_mode)
        ctx.save_for_backward(switches)
        ctx.dims, ctx.input_shape = dims, x.shape
        ctx.mark_non_differentiable(switches)
        return y, switches

    @staticmethod
    def backward(ctx: Any, g: Tensor, _g_switches: Tensor | None) -> tuple[Tensor | None, ...]:
        (switches,) = ctx.saved_tensors
        return rules.unpool_max(g, switches, ctx.input_shape, ctx.dims), None, None, None, None, None, None


_POOL_WITH_INDICES = {
    1: torch.max_pool1d_with_indices,
    2: torch._C._nn.max_pool2d_with_indices,
    3: torch._C._nn.max_pool3d_with_indices,
}

# ReLU spellings: function -> (argument names, defaults, the clipped region (lo, hi) read from the
# arguments, or None where this call is not a ReLU: a clamp or threshold is one only from zero).
_RELU_ARGS = ("input", "inplace")
_HARDTANH_ARGS = ("input", "min_val", "max_val", "inplace")
_CLAMP_ARGS = ("input", "min", "max")
_THRESHOLD_ARGS = ("input", "threshold", "value", "inplace")
Bounds = Callable[[dict[str, Any]], "tuple[float, float | None] | None"]


def _relu(a: dict[str, Any]) -> tuple[float, None]:
    return 0.0, None


def _relu6(a: dict[str, Any]) -> tuple[float, float]:
    return 0.0, 6.0


def _hardtanh(a: dict[str, Any]) -> tuple[float, float]:
    return a["min_val"], a["max_val"]


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _clamp(a: dict[str, Any]) -> tuple[float, float | None] | None:
    """``clamp(x, 0)`` is a ReLU, ``clamp(x, 0, hi)`` a clipped ReLU; any other clamp is not."""
    lo, hi = a.get("min"), a.get("max")
    if not (_is_number(lo) and lo == 0 and (hi is None or _is_number(hi) and hi > 0)):
        return None
    return 0.0, None if hi is None else float(hi)


def _threshold(a: dict[str, Any]) -> tuple[float, None] | None:
    """``threshold(x, 0, 0)`` (``y = x if x > 0 else 0``) is a ReLU; any other threshold is not."""
    t, v = a["threshold"], a["value"]
    return (0.0, None) if _is_number(t) and t == 0 and _is_number(v) and v == 0 else None


_RELUS: dict[Callable, tuple[tuple[str, ...], dict[str, Any], Bounds]] = {
    F.relu: (_RELU_ARGS, {"inplace": False}, _relu),
    torch.relu: (_RELU_ARGS, {"inplace": False}, _relu),
    torch.relu_: (("input",), {"inplace": True}, _relu),
    Tensor.relu: (("input",), {"inplace": False}, _relu),
    Tensor.relu_: (("input",), {"inplace": True}, _relu),
    F.relu6: (_RELU_ARGS, {"inplace": False}, _relu6),
    torch._C._nn.relu6: (("input",), {"inplace": False}, _relu6),
    torch._C._nn.relu6_: (("input",), {"inplace": True}, _relu6),
    F.hardtanh: (_HARDTANH_ARGS, {"min_val": -1.0, "max_val": 1.0, "inplace": False}, _hardtanh),
    F.hardtanh_: (_HARDTANH_ARGS[:3], {"min_val": -1.0, "max_val": 1.0, "inplace": True}, _hardtanh),
    **{f: (_CLAMP_ARGS, {"inplace": False}, _clamp)
       for f in (torch.clamp, Tensor.clamp, torch.clip, Tensor.clip, torch.clamp_min, Tensor.clamp_min)},
    **{f: (_CLAMP_ARGS, {"inplace": True}, _clamp)
       for f in (torch.clamp_, Tensor.clamp_, torch.clip_, Tensor.clip_, torch.clamp_min_, Tensor.clamp_min_)},
    F.threshold: (_THRESHOLD_ARGS, {"inplace": False}, _threshold),
    torch.threshold: (_THRESHOLD_ARGS[:3], {"inplace": False}, _threshold),
    torch.threshold_: (_THRESHOLD_ARGS[:3], {"inplace": True}, _threshold),
}

# Max-pool spellings: function -> (pooled dimensions, whether it always returns the indices).
_MAX_POOLS: dict[Callable, tuple[int, bool]] = {
    F.max_pool1d: (1, False), F.max_pool2d: (2, False), F.max_pool3d: (3, False),
    F.max_pool1d_with_indices: (1, True), F.max_pool2d_with_indices: (2, True),
    F.max_pool3d_with_indices: (3, True),
    torch.max_pool1d: (1, False), torch.max_pool2d: (2, False), torch.max_pool3d: (3, False),
    torch.max_pool1d_with_indices: (1, True),
    torch._C._nn.max_pool2d_with_indices: (2, True), torch._C._nn.max_pool3d_with_indices: (3, True),
}
_POOL_ARGS = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
_POOL_DEFAULTS = {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False, "return_indices": False}

# Activations with no DeconvNet / guided rule: seen, named in the result, passed through as autograd does.
_OTHER_ACTIVATIONS: dict[Callable, str] = {
    F.gelu: "gelu", F.silu: "silu", F.mish: "mish", F.elu: "elu", F.selu: "selu", F.celu: "celu",
    F.leaky_relu: "leaky_relu", F.rrelu: "rrelu", F.prelu: "prelu", F.softplus: "softplus",
    F.hardswish: "hardswish", F.hardsigmoid: "hardsigmoid", F.softsign: "softsign",
    F.logsigmoid: "logsigmoid", F.tanhshrink: "tanhshrink", F.glu: "glu",
    torch.sigmoid: "sigmoid", torch.sigmoid_: "sigmoid", Tensor.sigmoid: "sigmoid",
    Tensor.sigmoid_: "sigmoid", F.sigmoid: "sigmoid",
    torch.tanh: "tanh", torch.tanh_: "tanh", Tensor.tanh: "tanh", Tensor.tanh_: "tanh", F.tanh: "tanh",
}


def _bind(names: tuple[str, ...], defaults: dict[str, Any], args: tuple, kwargs: dict) -> dict[str, Any]:
    bound = dict(defaults)
    bound.update(zip(names, args))
    bound.update(kwargs)
    return bound


_handling = threading.local()


class RuleMode(TorchFunctionMode):
    """Active during one forward pass: swaps ReLUs and max-pools for rule-carrying nodes.

    With ``swap=False`` it only counts them: autograd's own ReLU and max-pool backward *are* the
    vanilla rule and switch unpooling (the tests hold them equal), so a gradient-only call keeps the
    native kernels.
    """

    def __init__(self, selector: RuleSelector, swap: bool = True) -> None:
        super().__init__()
        self.selector = selector
        self.swap = swap
        self.relu_calls = 0
        self.max_pool_calls = 0
        self.other_activations: Counter[str] = Counter()
        self.compiled_calls = 0

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if torch.compiler.is_compiling():
            # torch.compile is tracing through us: a rule swapped in here would be baked into the compiled
            # backward at whatever the selector said at trace time, so nothing is swapped; the engine refuses.
            self.compiled_calls += 1
            return func(*args, **kwargs)
        if getattr(_handling, "active", False):
            # A call another RuleMode of this thread is carrying out (explain called inside a forward pass
            # that is being explained): it belongs to that explanation, not to this one.
            return func(*args, **kwargs)
        _handling.active = True
        try:
            return self._handle(func, args, kwargs)
        finally:
            _handling.active = False

    def _handle(self, func: Callable, args: tuple, kwargs: dict) -> Any:
        if func in _RELUS:
            return self._relu(func, args, kwargs)
        if func in _MAX_POOLS:
            return self._max_pool(func, args, kwargs)
        if func in _OTHER_ACTIVATIONS:
            self.other_activations[_OTHER_ACTIVATIONS[func]] += 1
        return func(*args, **kwargs)

    def _relu(self, func: Callable, args: tuple, kwargs: dict) -> Tensor:
        names, defaults, bounds = _RELUS[func]
        a = _bind(names, defaults, args, kwargs)
        x = a["input"]
        region = bounds(a) if "out" not in a else None  # out= has no autograd: torch refuses it
        if region is None or not (torch.is_grad_enabled() and x.requires_grad):
            return func(*args, **kwargs)
        self.relu_calls += 1
        if not self.swap:
            return func(*args, **kwargs)
        lo, hi = region
        return _GatedReLU.apply(x, lo, hi, self.selector, bool(a["inplace"]))

    def _max_pool(self, func: Callable, args: tuple, kwargs: dict) -> Any:
        dims, always_indices = _MAX_POOLS[func]
        a = _bind(_POOL_ARGS, _POOL_DEFAULTS, args, kwargs)
        x = a["input"]
        if not (torch.is_grad_enabled() and x.requires_grad):
            return func(*args, **kwargs)
        self.max_pool_calls += 1
        if not self.swap:
            return func(*args, **kwargs)
        stride = a["stride"] if a["stride"] not in (None, [], ()) else a["kernel_size"]
        y, switches = _MaxPoolWithSwitches.apply(
            x, dims, a["kernel_size"], stride, a["padding"], a["dilation"], bool(a["ceil_mode"]))
        return (y, switches) if always_indices or a["return_indices"] else y
