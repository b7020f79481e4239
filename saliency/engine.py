"""``explain``: one forward pass, one input-only backward pass per method."""

from __future__ import annotations

import threading
import time
import warnings
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from saliency import rules
from saliency.errors import (InputError, ModelOutputError, NoReluError, TargetError,
                             UnsupportedActivationWarning)
from saliency.intercept import RuleMode, RuleSelector
from saliency.methods import METHODS, resolve_methods

Target = int | Sequence[int] | Tensor | None


@dataclass(frozen=True)
class Explanation(Mapping[str, Tensor]):
    """Maps ``method -> attribution`` (raw, signed, shaped like the input), plus what was explained.

    ``targets``: the class explained for each sample; ``logits``: the model's scores;
    ``activations``: non-ReLU activations the model ran (name -> calls), which DeconvNet and guided
    backpropagation pass through as plain gradients; ``relu_calls`` / ``max_pool_calls``: calls the
    rules covered; ``seconds``: wall time of the forward pass and of each method's backward pass.
    """

    maps: dict[str, Tensor]
    targets: Tensor
    logits: Tensor
    activations: dict[str, int] = field(default_factory=dict)
    relu_calls: int = 0
    max_pool_calls: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

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


def explain(model: nn.Module, inputs: Tensor, methods: str | Sequence[str] = METHODS,
            target: Target = None) -> Explanation:
    """Explain ``model``'s class scores for ``inputs`` (``[B, C, H, W]`` or any ``[B, ...]``).

    ``methods``: names from :data:`saliency.METHODS`, one name, or ``"all"``. ``target``: ``None``
    (each sample's top-1 class), one class index for the whole batch, or one index per sample.
    The model runs in eval mode for the call and is left exactly as it was; several methods share
    one forward pass; only gradients with respect to the inputs are computed. Thread-safe.
    """
    chosen = resolve_methods(methods)
    x = _as_model_input(model, inputs)
    selector = RuleSelector()
    mode = RuleMode(selector, swap=any(m.relu_rule is not rules.vanilla for m in chosen))
    seconds: dict[str, float] = {}
    with _evaluation_mode(model), torch.inference_mode(False), torch.enable_grad():
        leaf = x.detach().requires_grad_(True)
        start = time.perf_counter()
        with mode:
            logits = model(leaf.clone())
        seconds["forward"] = time.perf_counter() - start
        logits = _check_logits(logits, len(x))
        targets = _resolve_targets(target, logits)
        _check_relus(mode, chosen)
        notes = _activation_notes(mode, chosen)
        score = logits.gather(1, targets[:, None]).sum()
        maps: dict[str, Tensor] = {}
        for i, method in enumerate(chosen):
            selector.rule = method.relu_rule
            start = time.perf_counter()
            (grad,) = torch.autograd.grad(score, leaf, retain_graph=i < len(chosen) - 1)
            seconds[method.name] = time.perf_counter() - start
            maps[method.name] = grad
    return Explanation(maps=maps, targets=targets, logits=logits.detach(),
                       activations=dict(mode.other_activations), relu_calls=mode.relu_calls,
                       max_pool_calls=mode.max_pool_calls, seconds=seconds, warnings=notes)


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
    dtype = param.dtype if param.is_floating_point() else inputs.dtype
    return inputs.to(device=param.device, dtype=dtype)


def _check_logits(logits: object, batch: int) -> Tensor:
    if not (isinstance(logits, Tensor) and logits.dim() == 2 and logits.shape[0] == batch):
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ModelOutputError(
            f"the model must return class scores shaped [batch={batch}, classes], got {shape}")
    return logits


def _resolve_targets(target: Target, logits: Tensor) -> Tensor:
    batch, classes = logits.shape
    if target is None:
        return logits.detach().argmax(dim=1)
    t = torch.as_tensor(target, device=logits.device)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TargetError(f"target must be class indices (integers), got {t.dtype}")
    if t.dim() == 0:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise TargetError(f"target must be one class index or {batch} of them, got shape {tuple(t.shape)}")
    bad = t[(t < 0) | (t >= classes)]
    if len(bad):
        raise TargetError(f"target class {bad[0].item()} is out of range: the model has {classes} classes (0..{classes - 1})")
    return t.long()


def _check_relus(mode: RuleMode, chosen: list) -> None:
    needing = [m.name for m in chosen if m.needs_relu]
    if needing and mode.relu_calls == 0:
        seen = f" (it ran {', '.join(sorted(mode.other_activations))})" if mode.other_activations else ""
        raise NoReluError(
            f"{' and '.join(needing)} need ReLU layers, but the model ran none that could be seen{seen}; "
            "use 'vanilla', or a model with ReLU activations (TorchScript models are opaque)")


def _activation_notes(mode: RuleMode, chosen: list) -> tuple[str, ...]:
    needing = [m.name for m in chosen if m.needs_relu]
    if not (needing and mode.other_activations):
        return ()
    names = ", ".join(f"{name} ×{n}" for name, n in sorted(mode.other_activations.items()))
    note = (f"the model uses activations with no {'/'.join(needing)} rule ({names}); "
            "gradients pass through them unchanged, as in the plain gradient")
    warnings.warn(note, UnsupportedActivationWarning, stacklevel=3)
    return (note,)


_mode_lock = threading.Lock()
_mode_sessions: "weakref.WeakKeyDictionary[nn.Module, tuple[int, dict[nn.Module, bool]]]" = weakref.WeakKeyDictionary()


@contextmanager
def _evaluation_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode while any explanation of ``model`` runs; the first caller's train flags come back after the last."""
    with _mode_lock:
        count, saved = _mode_sessions.get(model, (0, {}))
        if count == 0:
            saved = {m: m.training for m in model.modules()}
            model.eval()
        _mode_sessions[model] = (count + 1, saved)
    try:
        yield
    finally:
        with _mode_lock:
            count, saved = _mode_sessions.pop(model)
            if count > 1:
                _mode_sessions[model] = (count - 1, saved)
            else:
                for module, training in saved.items():
                    module.training = training
