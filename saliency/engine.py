"""``explain``: one forward pass, one input-only backward pass per method."""

from __future__ import annotations

import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from saliency.errors import (CompiledModelError, InputError, ModelOutputError, NoReluError, OptionError,
                             TargetError, UnsupportedActivationWarning)
from saliency.graph import REENTRANT_CHECKPOINT, GraphScan
from saliency.methods import RULE_METHODS, Method, resolve_methods, resolve_options
from saliency.passes import ForwardPass, Target
from saliency.units import Placed, Unit, as_target


@dataclass(frozen=True)
class Explanation(Mapping[str, Tensor]):
    """Maps ``method -> attribution`` (raw, signed, shaped like the input), plus what was explained.

    ``targets``: the class explained for each sample; ``logits``: the model's scores;
    ``activations``: non-ReLU activations the model ran (name -> calls), which DeconvNet and guided
    backpropagation pass through as plain gradients; ``relu_calls`` / ``max_pool_calls``: calls the
    rules covered; ``seconds``: wall time of the forward pass and of each method; ``layer``: the
    module Grad-CAM read, when one was asked for. ``unit``: the :class:`~saliency.Unit` explained
    instead of a class (``targets`` is then −1 for every sample), with ``unit_values`` ``[B]``, its
    value in each sample, and ``unit_positions`` ``[B, 2]``, its (row, column) in each sample
    (``None`` for a whole channel).
    """

    maps: dict[str, Tensor]
    targets: Tensor
    logits: Tensor
    activations: dict[str, int] = field(default_factory=dict)
    relu_calls: int = 0
    max_pool_calls: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    layer: str | None = None
    unit: Unit | None = None
    unit_values: Tensor | None = None
    unit_positions: Tensor | None = None

    def __getitem__(self, method: str) -> Tensor:
        return self.maps[method]

    def __iter__(self) -> Iterator[str]:
        return iter(self.maps)

    def __len__(self) -> int:
        return len(self.maps)

    @property
    def probabilities(self) -> Tensor:
        """Softmax of the logits, ``[B, classes]``."""
        return self.logits.softmax(dim=1)


def explain(model: nn.Module, inputs: Tensor, methods: str | Sequence[str] = RULE_METHODS,
            target: Target = None, *, options: Mapping[str, Any] | None = None,
            progress: Callable[[str, int, int], None] | None = None) -> Explanation:
    """Explain ``model``'s class scores for ``inputs`` (``[B, C, H, W]`` or any ``[B, ...]``).

    ``methods``: names from :data:`saliency.METHODS`, one name, or ``"all"`` (default: the three
    ReLU rules). ``target``: ``None`` (each sample's top-1 class), one class index for the whole
    batch, one index per sample, or a :class:`~saliency.Unit` of a layer (or its string form,
    ``"features.28:12"``, ``"features.28:12@7,9"``, ``"features.28:12@max"``). ``options``: method parameters (``samples``, ``noise``,
    ``seed``, ``steps``, ``baseline``, ``layer`` …, see ``REGISTRY[name].options``).
    ``progress(method, done, total)`` hears from the sampling methods.
    The model runs in eval mode for the call and is left exactly as it was; the methods share one
    forward pass; only gradients with respect to the inputs are computed. Thread-safe.
    """
    return explain_classes(model, inputs, methods, [target], options=options, progress=progress)[0]


def explain_classes(model: nn.Module, inputs: Tensor, methods: str | Sequence[str] = RULE_METHODS,
                    targets: Sequence[Target] = (None,), *, topk: int | None = None,
                    options: Mapping[str, Any] | None = None,
                    progress: Callable[[str, int, int], None] | None = None) -> list[Explanation]:
    """:func:`explain` for several classes per sample at the cost of **one** forward pass.

    One :class:`Explanation` per entry of ``targets`` (each as ``target`` of :func:`explain`), or,
    with ``topk=K``, one per rank: each sample's most probable class, its second, … its K-th. Each
    further class costs only the methods' input-only backward passes. ``seconds["forward"]`` is
    counted in the first explanation only.
    """
    chosen = resolve_methods(methods)
    settings = resolve_options(chosen, options)
    targets = [as_target(t) for t in targets]
    units = [t for t in targets if isinstance(t, (Unit, Placed))] if topk is None else []
    x = _as_model_input(model, inputs)
    _check_layers_visible(model, chosen)
    if topk is not None and topk < 1:
        raise TargetError(f"topk must be at least 1, got {topk}")
    if topk is None and not targets:
        raise TargetError("no target given: pass at least one (None: each sample's top-1 class)")
    count = topk if topk is not None else len(targets)
    with _evaluation_mode(model), torch.inference_mode(False), torch.enable_grad():
        start = time.perf_counter()
        shared = frozenset().union(*(m.shared_passes for m in chosen))
        units_only = bool(targets) and len(units) == len(targets)
        first = ForwardPass(model, x, None if topk is not None else targets[0],
                            capture=_layer(model, settings, chosen, units_only), backward_passes=len(shared) * count,
                            units=units)
        forward_seconds = time.perf_counter() - start
        classes = first.logits.shape[1]
        if topk is not None and topk > classes:
            raise TargetError(f"topk {topk} is more than the model's {classes} classes; use at most {classes}")
        _check_opaque(first.nodes, chosen)
        _check_relus(first.nodes, chosen)
        notes = _activation_notes(first.nodes, chosen)
        others = ([first.for_rank(k) for k in range(1, topk)] if topk is not None
                  else [first.for_target(t) for t in list(targets)[1:]])
        results = []
        for run in [first, *others]:
            seconds = {"forward": forward_seconds if run is first else 0.0}
            maps: dict[str, Tensor] = {}
            for method in chosen:
                report = (lambda done, total, name=method.name: progress(name, done, total)) if progress else _silent
                start = time.perf_counter()
                maps[method.name] = method.attribute(run, settings, report).detach()
                seconds[method.name] = time.perf_counter() - start
            results.append((run, maps, seconds))
    nodes = first.nodes
    return [Explanation(maps=maps, targets=run.targets, logits=first.logits.detach(),
                        activations=dict(nodes.other_activations), relu_calls=nodes.relu_calls,
                        max_pool_calls=nodes.max_pool_calls, seconds=seconds, warnings=notes,
                        layer=run.layer_name if any(m.needs_layer for m in chosen) else first.layer_name,
                        **_unit_fields(run))
            for run, maps, seconds in results]


def _unit_fields(run: ForwardPass) -> dict[str, Any]:
    if run.unit is None:
        return {}
    a = run.unit_activation
    return {"unit": run.unit.unit, "unit_values": run.unit.unit.value(a, run.unit.index).detach(),
            "unit_positions": run.unit.positions(a)}


def _silent(done: int, total: int) -> None:
    pass


def _layer(model: nn.Module, settings: Mapping[str, Any], chosen: list[Method],
           units_only: bool = False) -> nn.Module | str | None:
    """The module Grad-CAM reads: ``"auto"`` (the last 4-D feature map) or a dotted name.

    With units as the only targets, ``"auto"`` captures nothing: Grad-CAM reads each unit's own layer.
    """
    if not any(m.needs_layer for m in chosen):
        return None
    name = settings["layer"]
    if name == "auto":
        return None if units_only else "auto"
    try:
        return model.get_submodule(name)
    except AttributeError:
        examples = ", ".join(n for n, _ in list(model.named_children())[:6])
        raise OptionError(f"the model has no layer {name!r}; give a dotted module name such as {examples}") from None


def _as_model_input(model: nn.Module, inputs: Tensor) -> Tensor:
    if not isinstance(inputs, Tensor):
        raise InputError(f"inputs must be a torch.Tensor shaped [batch, ...], got {type(inputs).__name__}")
    if not inputs.is_floating_point():
        raise InputError(f"inputs must be a floating-point tensor, got {inputs.dtype}; convert with .float()")
    if inputs.dim() < 2 or inputs.shape[0] == 0:
        raise InputError(f"inputs must be shaped [batch, ...] with batch >= 1, got {tuple(inputs.shape)}")
    param = next(model.parameters(), None)
    if param is None:
        return inputs
    if param.is_inference():
        raise InputError("the model's parameters were made under torch.inference_mode() and cannot take part in a "
                         "backward pass; build or load the model under torch.no_grad() instead")
    dtype = param.dtype if param.is_floating_point() else inputs.dtype
    return inputs.to(device=param.device, dtype=dtype)


def _check_opaque(nodes: GraphScan, chosen: list) -> None:
    """Rules cannot reach ReLUs hidden in one opaque node (AOTAutograd's compiled backward, TorchScript)."""
    if REENTRANT_CHECKPOINT in nodes.opaque:
        raise ModelOutputError(
            "the model runs torch.utils.checkpoint(..., use_reentrant=True), through which torch computes no "
            "gradient with respect to the input; use use_reentrant=False (the same memory saving)")
    ruled = [m.name for m in chosen if m.needs_relu]
    if ruled and nodes.opaque:
        what = " and ".join(sorted(nodes.opaque))
        raise CompiledModelError(
            f"{' and '.join(ruled)} cannot reach into the {what} code this model runs (its ReLUs are hidden in "
            f"one opaque node); {_OPAQUE_ADVICE.get(what, _OPAQUE_ADVICE['both'])}, "
            "or use 'vanilla', 'smoothgrad' or 'integrated_gradients'")


def _check_layers_visible(model: nn.Module, chosen: list) -> None:
    """Grad-CAM reads a module's output; inside torch.compile'd code Dynamo runs the ops, not the modules."""
    layered = [m.name for m in chosen if m.needs_layer]
    if layered and any(hasattr(m, "_orig_mod") for m in model.modules()):
        raise CompiledModelError(
            f"{' and '.join(layered)} cannot read a layer's output inside torch.compile'd code, which this model "
            f"runs; {_OPAQUE_ADVICE['torch.compile']}")


_OPAQUE_ADVICE = {
    "torch.compile": "explain the uncompiled model (a compiled module keeps it as ._orig_mod)",
    "TorchScript": "explain the Python model it was scripted or traced from",
    "both": "explain the plain Python model",
}


def _check_relus(nodes: GraphScan, chosen: list) -> None:
    needing = [m.name for m in chosen if m.needs_relu]
    if needing and nodes.relu_calls == 0:
        seen = f" (it ran {', '.join(sorted(nodes.other_activations))})" if nodes.other_activations else ""
        raise NoReluError(
            f"{' and '.join(needing)} need ReLU layers, but the model ran none that could be seen{seen}; "
            "use 'vanilla', or a model with ReLU activations")


def _activation_notes(nodes: GraphScan, chosen: list) -> tuple[str, ...]:
    needing = [m.name for m in chosen if m.needs_relu]
    if not (needing and nodes.other_activations):
        return ()
    names = ", ".join(f"{name} ×{n}" for name, n in sorted(nodes.other_activations.items()))
    note = (f"the model uses activations with no {'/'.join(needing)} rule ({names}); "
            "gradients pass through them unchanged, as in the plain gradient")
    warnings.warn(note, UnsupportedActivationWarning, stacklevel=3)
    return (note,)


_mode_lock = threading.Lock()
_mode_sessions: "weakref.WeakKeyDictionary[nn.Module, tuple[int, list[nn.Module]]]" = weakref.WeakKeyDictionary()


@contextmanager
def _evaluation_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode while any explanation of ``model`` runs; modules in training mode get it back after the last.

    A model already in eval mode is not touched at all (the usual case in a service).
    """
    with _mode_lock:
        count, training = _mode_sessions.get(model, (0, []))
        if count == 0:
            training = [m for m in model.modules() if m.training]
            if training:
                model.eval()
        _mode_sessions[model] = (count + 1, training)
    try:
        yield
    finally:
        with _mode_lock:
            count, training = _mode_sessions.pop(model)
            if count > 1:
                _mode_sessions[model] = (count - 1, training)
            else:
                for module in training:
                    module.training = True
