"""One forward pass, the ReLUs its graph holds, and the backward passes methods ask of it."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from saliency import graph, rules
from saliency.errors import ModelOutputError, OptionError, TargetError
from saliency.rules import ReluRule
from saliency.units import Placed, Unit, as_target, find_layer

Target = int | Sequence[int] | Tensor | Unit | str | None
"""A class index for the whole batch, one per sample, ``None`` (each sample's top-1), or a :class:`Unit`
(or its string form) for the whole batch."""


class ForwardPass:
    """The model run once on ``x``; each method's backward pass reuses the graph.

    ``capture``: a layer whose output Grad-CAM needs: a module, ``"auto"`` (the last module that
    returns a 4-D feature map) or ``None`` (capture nothing). ``scan``: whether to read the graph's
    ReLUs, max-pools and other activations (:attr:`nodes`); plain gradients need none of it.
    ``backward_passes``: how many backward passes will be asked of the graph (``None``: not known),
    counting those of :meth:`for_target` / :meth:`for_rank`; the last one frees the forward pass's
    saved tensors as it goes, as a plain backward pass does, instead of holding them (and a second
    set of buffers for the gradients) to the end. ``units``: further units :meth:`for_target` will
    explain (their layers are captured too); a unit's layer is read as Grad-CAM's is.
    """

    def __init__(self, model: nn.Module, x: Tensor, target: Target | Placed, *, scan: bool = True,
                 capture: nn.Module | str | None = None, backward_passes: int | None = None,
                 units: Sequence[Unit | Placed] = ()) -> None:
        self.model = model
        # A tensor made under torch.inference_mode() cannot join a graph: copy it out (a normal tensor here).
        self.leaf = (x.clone() if x.is_inference() else x).detach().requires_grad_(True)
        target = as_target(target)
        requested = requested_targets(target, len(x), self.leaf.device)  # before the device has work queued
        asked = [t.unit if isinstance(t, Placed) else t for t in (target, *units) if isinstance(t, (Unit, Placed))]
        names = list(dict.fromkeys(u.layer for u in asked))
        modules = [find_layer(model, name) for name in names]
        with _capturing(capture, *modules) as (self.layer, *layers):
            logits = model(self.leaf.clone())
        self.layer.settle()
        if self.layer.changed_in_place:  # run again, taking a copy of the layer "auto" chose
            with _capturing(self.layer.module, *modules) as (self.layer, *layers):
                logits = model(self.leaf.clone())
        self.unit_layers: dict[str, CapturedLayer] = dict(zip(names, layers))
        self.logits = _check_logits(logits, len(x))
        self._explaining(self._resolved(requested))
        if not self.score.requires_grad:
            raise ModelOutputError(_NOT_DIFFERENTIABLE.format(
                "carry no gradient: the forward runs under torch.no_grad() or torch.inference_mode()"))
        outputs = [layer.activation for layer in layers if isinstance(layer.activation, Tensor)]
        self.nodes = graph.scan(self.logits, *outputs) if scan else graph.GraphScan()
        self._passes_left = [backward_passes]  # one budget, shared with the passes retargeted from this one

    def for_target(self, target: Target) -> ForwardPass:
        """This forward pass explaining another target (as in the constructor; a unit's layer must have been
        captured: name it in ``units``), with its own backward passes."""
        return self._retargeted(self._resolved(requested_targets(as_target(target), len(self.leaf),
                                                                 self.leaf.device)))

    def _resolved(self, requested: tuple[Tensor, Tensor] | Unit | Placed | None) -> Tensor | Placed:
        """Class indices ``[B]`` checked against the logits, or a unit placed in each sample of this pass."""
        if isinstance(requested, (Unit, Placed)):
            unit = requested.unit if isinstance(requested, Placed) else requested
            layer = self.unit_layers.get(unit.layer)
            if layer is None:
                raise TargetError(f"unit {unit}: layer {unit.layer!r} was not captured in this forward pass; "
                                  "name every unit to explain in the pass's units")
            if layer.activation is None:
                raise TargetError(f"unit {unit}: layer {unit.layer!r} did not run in the model's forward pass")
            unit.check(layer.activation)
            return requested if isinstance(requested, Placed) else Placed(unit, unit.locate(layer.activation))
        return checked_targets(requested, self.logits)

    def for_rank(self, rank: int) -> ForwardPass:
        """This forward pass explaining each sample's ``rank``-th most probable class (0: the top-1)."""
        return self._retargeted(self.logits.detach().topk(rank + 1, dim=1).indices[:, rank])

    def _retargeted(self, targets: Tensor) -> ForwardPass:
        other = object.__new__(ForwardPass)
        other.__dict__.update(self.__dict__)  # the model, input, graph, captured layer and pass budget
        other._explaining(targets)
        return other

    def _explaining(self, targets: Tensor | Placed) -> None:
        """Explain ``targets`` (classes, or a placed unit): the score backward passes start from, no gradients yet.

        For a unit, :attr:`targets` is −1 for every sample and :attr:`unit` says what is explained.
        """
        self.unit = targets if isinstance(targets, Placed) else None
        if self.unit is None:
            self.targets = targets
            self.score = self.logits.gather(1, targets[:, None]).sum()
        else:
            self.targets = torch.full((len(self.leaf),), -1, dtype=torch.long, device=self.logits.device)
            self.score = self.unit.unit.value(self.unit_activation, self.unit.index).sum()
        self._input_gradients: dict[ReluRule, Tensor] = {}
        self.cache: dict[str, Any] = {}  # results methods share, e.g. the Grad-CAM map

    @property
    def unit_activation(self) -> Tensor | None:
        """The output of the explained unit's layer in this pass (``None`` when a class is explained)."""
        return None if self.unit is None else self.unit_layers[self.unit.unit.layer].activation

    def copies_target(self, copies: int) -> Tensor | Placed:
        """What ``copies`` copies of the batch, stacked one after another, explain: the same classes, or the same
        unit at the positions placed on the inputs themselves."""
        if self.unit is None:
            return self.targets.cpu().repeat(copies)
        return self.unit.repeat(copies)

    def gradient(self, rule: ReluRule) -> Tensor:
        """d score / d input with ``rule`` at every ReLU (computed once per rule)."""
        if rule not in self._input_gradients:
            with graph.applying(rule, self.nodes.relus):
                grad = self._backward(self.leaf)
            if grad is None:
                raise ModelOutputError(_NOT_DIFFERENTIABLE.format(
                    "do not depend on the input through autograd: the forward detaches it (.detach(), numpy)"))
            self._input_gradients[rule] = grad
        return self._input_gradients[rule]

    @property
    def cam_layer(self) -> CapturedLayer:
        """The layer Grad-CAM reads: the one captured for it, or, for a unit with no layer named, the unit's own."""
        if self.unit is not None and self.layer.wanted in ("auto", None):
            return self.unit_layers[self.unit.unit.layer]
        return self.layer

    @property
    def layer_name(self) -> str | None:
        """The dotted name of the module Grad-CAM read, if one was captured."""
        module = self.cam_layer.module
        if module is None:
            return None
        return next((name for name, m in self.model.named_modules() if m is module), type(module).__name__)

    def layer_gradient(self) -> tuple[Tensor, Tensor]:
        """The captured layer's activation ``A`` and its plain gradient ``d score / d A``, in the input's dtype.

        (Under autocast a layer may run in bfloat16 or float16; Grad-CAM's sums are not left at that precision.)
        """
        layer = self.cam_layer
        if layer.activation is None:
            if isinstance(self.model, torch.jit.ScriptModule):
                raise ModelOutputError("Grad-CAM cannot read the layers of a TorchScript model (they run opaquely); "
                                       "explain the Python model it was scripted or traced from")
            raise ModelOutputError(
                "no layer returned a [batch, channels, height, width] feature map to compute Grad-CAM on; "
                "name one with the 'layer' option")
        a = layer.activation
        if "layer_gradient" not in self.cache:
            self.cache["layer_gradient"] = self._backward(a) if a.requires_grad else None
        grad = self.cache["layer_gradient"]
        if grad is None and self.unit is not None:
            raise OptionError(
                f"unit {self.unit.unit} does not depend on layer {self.layer_name!r}'s output (it runs after the "
                f"unit's layer, or its output is not used), so it has no Grad-CAM for the unit; name an earlier "
                "layer with the 'layer' option, or leave it out to read the unit's own layer")
        if grad is None:
            raise OptionError(
                f"the class scores do not depend on layer {self.layer_name!r}'s output (it ran under torch.no_grad(), "
                "or its output was not used), so it has no Grad-CAM; name another layer with the 'layer' option")
        return a.detach().to(self.leaf.dtype), grad.to(self.leaf.dtype)

    def _backward(self, wrt: Tensor) -> Tensor | None:
        """d score / d ``wrt``, keeping the graph for the passes still to come."""
        budget = self._passes_left
        if budget[0] is not None:
            if budget[0] < 1:
                raise RuntimeError("more backward passes asked of this forward pass than were planned")
            budget[0] -= 1
        retain = budget[0] is None or budget[0] > 0
        return torch.autograd.grad(self.score, wrt, retain_graph=retain, allow_unused=True)[0]


_NOT_DIFFERENTIABLE = "the model's class scores {}; explain needs a forward pass that is differentiable in the input"


def input_gradients(model: nn.Module, x: Tensor, targets: Tensor | Placed) -> Tensor:
    """Plain gradients of the ``targets`` scores (or of a placed unit) for a batch: one forward and one backward pass."""
    return ForwardPass(model, x, targets, scan=False, backward_passes=1).gradient(rules.vanilla)


def unit_values(model: nn.Module, x: Tensor, unit: Placed) -> Tensor:
    """The placed unit's value in each sample of ``x``, ``[N]``, from one forward pass (differentiable in ``x``)."""
    with _capturing(find_layer(model, unit.unit.layer)) as (layer,):
        model(x)
    unit.unit.check(layer.activation)
    return unit.unit.value(layer.activation, unit.index)


def layer_outputs(model: nn.Module, x: Tensor, layers: Sequence[str]) -> dict[str, Tensor]:
    """Each named layer's own output for ``x``, read as units and Grad-CAM read them, with no graph kept."""
    modules = [find_layer(model, name) for name in layers]
    with torch.no_grad(), _capturing(*modules) as captured:
        model(x)
    return {name: layer.activation for name, layer in zip(layers, captured)}


def requested_targets(target: Target, batch: int, device: torch.device) -> tuple[Tensor, Tensor] | None:
    """The class indices asked for, one per sample, on the CPU (for checks) and on ``device`` (to index with).

    ``None`` (each sample's top-1) stays ``None``, and a unit stays the unit. Called before the forward pass, so that copying
    between host and device never waits for the model on an accelerator.
    """
    if target is None or isinstance(target, (Unit, Placed)):
        return target
    given = torch.as_tensor(target)
    t = given.detach().cpu()
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TargetError(f"target must be class indices (integers), got {t.dtype}")
    if t.dim() == 0:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise TargetError(f"target must be one class index or {batch} of them, got shape {tuple(t.shape)}")
    t = t.long()
    usable = given.device == device and given.dtype == torch.long and given.shape == (batch,)
    return t, (given.detach() if usable else t.to(device))


def checked_targets(requested: tuple[Tensor, Tensor] | None, logits: Tensor) -> Tensor:
    """Class indices ``[B]`` for ``logits``: each row's top-1, or the requested ones once checked against the model."""
    if requested is None:
        return logits.detach().argmax(dim=1)
    on_cpu, on_device = requested
    classes = logits.shape[1]
    bad = next((c for c in on_cpu.tolist() if not 0 <= c < classes), None)
    if bad is not None:
        raise TargetError(f"target class {bad} is out of range: the model has {classes} classes (0..{classes - 1})")
    return on_device.to(logits.device)


def _check_logits(logits: object, batch: int) -> Tensor:
    if not (isinstance(logits, Tensor) and logits.dim() == 2 and logits.shape[0] == batch):
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ModelOutputError(f"the model must return class scores shaped [batch={batch}, classes], got {shape}")
    return logits


class CapturedLayer:
    """The layer Grad-CAM looks at, and its output in this thread's forward pass.

    ``"auto"`` keeps the last module with parameters (a conv layer or block, not a pooling or
    dropout layer) to return a 4-D feature map larger than 1×1 that gradients flow through (not one
    run under ``torch.no_grad()``); failing that, one of 1×1.

    A named layer's output is handed on to the rest of the model as a copy, so ops that later work
    in place (``ReLU(inplace=True)``, ``out += identity``) change the copy: the captured tensor stays
    the layer's own output, and its gradient is the gradient with respect to that output. ``"auto"``
    copies nothing (it would copy every candidate); :attr:`changed_in_place` says when a later op
    changed the layer it chose, and the forward pass is then run again with that layer named.
    """

    def __init__(self, wanted: nn.Module | str | None) -> None:
        self.wanted = wanted
        self.module: nn.Module | None = None
        self.activation: Tensor | None = None
        self._version = 0
        self._fallback: tuple[nn.Module, Tensor] | None = None

    def offer(self, module: nn.Module, output: Any) -> Any:
        """Look at ``module``'s ``output``; return what the rest of the model runs on."""
        if self.wanted is module:
            self.module, self.activation = module, output
            return output.clone() if isinstance(output, Tensor) else output
        if (self.wanted == "auto" and isinstance(output, Tensor) and output.dim() == 4 and output.requires_grad
                and next(module.parameters(), None) is not None):
            if output.shape[2] * output.shape[3] > 1:
                self.module, self.activation, self._version = module, output, output._version
            elif self.module is None:
                self._fallback = (module, output)
        return output

    def settle(self) -> None:
        """After the forward pass: fall back to a 1×1 map if no larger one came."""
        if self.module is None and self._fallback is not None:
            (self.module, self.activation), self._fallback = self._fallback, None
            self._version = -1  # unknown: take it again by name

    @property
    def changed_in_place(self) -> bool:
        """Whether an op after the layer ``"auto"`` chose changed its output in place (Grad-CAM would misread it)."""
        return self.wanted == "auto" and self.activation is not None and self.activation._version != self._version


# A process-wide forward hook, present only while some thread captures, acting only for that thread:
# nothing is attached to the model, and other threads' forward passes are not seen.
_capture = threading.local()
_hook_lock = threading.Lock()
_hook_users = 0
_hook_handle: Any = None


def _on_module_forward(module: nn.Module, args: Any, output: Any) -> Any:
    for layer in getattr(_capture, "layers", ()):
        output = layer.offer(module, output)
    return output


@contextmanager
def _capturing(*wanted: nn.Module | str | None) -> Iterator[list[CapturedLayer]]:
    """One :class:`CapturedLayer` per entry of ``wanted`` (``None``: one that captures nothing), in order."""
    global _hook_users, _hook_handle
    layers = [CapturedLayer(w) for w in wanted]
    if all(w is None for w in wanted):
        yield layers
        return
    with _hook_lock:
        if _hook_users == 0:
            _hook_handle = nn.modules.module.register_module_forward_hook(_on_module_forward)
        _hook_users += 1
    previous, _capture.layers = getattr(_capture, "layers", ()), [layer for layer in layers if layer.wanted is not None]
    try:
        yield layers
    finally:
        _capture.layers = previous
        with _hook_lock:
            _hook_users -= 1
            if _hook_users == 0:
                _hook_handle.remove()
                _hook_handle = None
