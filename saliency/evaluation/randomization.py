"""Model-parameter randomisation tests (Adebayo et al., 2018, "Sanity Checks for Saliency Maps").

A method whose map barely changes when the network's weights are replaced by random ones cannot
be explaining what the network learned. :func:`cascading_randomization` re-initialises the
network from the logits downward, one block more at each step; :func:`independent_randomization`
re-initialises one block at a time, the others keeping their trained weights. After each step,
every method's map is compared with the trained network's map for the same image and class
(the class the trained network predicted) by the :data:`METRICS`.

The caller's model is never touched: the tests work on a deep copy.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from saliency.engine import Explanation, explain
from saliency.evaluation.modes import frozen
from saliency.evaluation.similarity import METRICS, magnitude, map_similarity, nanmean, nanstd, noise_baseline

MAX_BLOCKS = 8
"""Default number of randomisation steps at most (layers of the demo net, residual stages of a ResNet)."""
_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


@dataclass(frozen=True)
class Block:
    """Modules re-initialised together, named by their common prefix in ``model.named_modules()``."""

    name: str
    modules: tuple[nn.Module, ...]


@dataclass
class RandomizationCurve:
    """Similarity to the trained maps after each step, per method and metric (mean and std over images).

    ``mode``: ``"cascading"`` (step ``i`` = blocks ``0..i`` random, counted from the logits) or
    ``"independent"`` (step ``i`` = only block ``i`` random). ``baseline``: the same metrics for a
    map of uniform noise — the floor a map unrelated to the trained one reaches.
    """

    mode: str
    steps: list[str]
    mean: dict[str, dict[str, list[float]]]
    std: dict[str, dict[str, list[float]]]
    baseline: dict[str, float]
    targets: list[int] = field(default_factory=list)
    left_out: dict[str, list[int]] = field(default_factory=dict)
    """Per method and step, the images left out of the means: the trained or the randomised map was
    constant (all zero, as Grad-CAM's can be), where a rank correlation is undefined."""
    example: dict[str, list[np.ndarray]] = field(default_factory=dict, repr=False)
    """``|map|`` of the first image per method: the trained model's, then after each step (not in JSON)."""

    def to_dict(self) -> dict:
        return {"mode": self.mode, "steps": self.steps, "metrics": METRICS, "mean": self.mean,
                "std": self.std, "baseline": self.baseline, "targets": self.targets, "left_out": self.left_out}


def parameter_layers(model: nn.Module, example: Tensor) -> list[tuple[str, nn.Module]]:
    """Modules that own parameters, in the order one forward pass of ``example`` calls them.

    Modules never called (auxiliary heads) are left out.
    """
    owners = {m: name for name, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))}
    order: dict[nn.Module, None] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, _args: order.setdefault(mod)) for m in owners]
    try:
        with frozen(model):
            model(example[:1].clone())  # a model may work in place on its input
    finally:
        for hook in hooks:
            hook.remove()
    return [(owners[m], m) for m in order]


def blocks(model: nn.Module, example: Tensor, max_blocks: int = MAX_BLOCKS) -> list[Block]:
    """The network cut into at most ``max_blocks`` blocks, **from the logits downward**.

    A normalisation layer joins the layer that ran before it (a conv and its batch norm are one
    step). Layers are grouped by the first components of their module names — the deepest
    naming level with at most ``max_blocks`` groups (``demo``: each conv; ResNet: the stem, each
    stage and the head) — or, when that level has under half as many, the next finer level cut
    into ``max_blocks`` consecutive runs (VGG: runs of two or three layers).
    """
    if max_blocks < 1:
        raise ValueError(f"max_blocks must be at least 1, got {max_blocks}")
    units: list[tuple[str, list[nn.Module]]] = []
    for name, module in parameter_layers(model, example):
        if isinstance(module, _NORMS) and units:
            units[-1][1].append(module)
        else:
            units.append((name, [module]))
    if not units:
        return []
    deepest = max(name.count(".") + 1 for name, _ in units)
    chosen: list[tuple[str, list[nn.Module]]] = []
    for depth in range(1, deepest + 1):
        grouped: dict[str, list[nn.Module]] = {}
        for name, modules in units:
            grouped.setdefault(".".join(name.split(".")[:depth]), []).extend(modules)
        if len(grouped) > max_blocks:
            if len(chosen) < max(2, max_blocks // 2):  # too coarse: cut the finer level into runs
                chosen = _consecutive_runs(list(grouped.items()), max_blocks)
            break
        if len(grouped) > len(chosen):
            chosen = list(grouped.items())
    return [Block(name, tuple(modules)) for name, modules in reversed(chosen)]


def randomize_(block: Block, seed: int) -> None:
    """Re-initialise ``block`` in place with its layers' own initialisers (``reset_parameters``).

    Parameters of a module without one are redrawn from a normal distribution with their current
    mean and standard deviation. Deterministic for a given ``seed``; the global RNGs are untouched.
    """
    gpus = sorted({p.device.index or 0 for m in block.modules for p in m.parameters() if p.is_cuda})
    with torch.random.fork_rng(devices=gpus), torch.no_grad():
        torch.manual_seed(seed)
        for module in block.modules:
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
                continue
            for p in module.parameters(recurse=False):
                spread = float(p.std()) if p.numel() > 1 else 0.0
                p.normal_(float(p.mean()), spread or 0.02)


def cascading_randomization(model: nn.Module, inputs: Tensor, methods: str | Sequence[str] = "all", *,
                            max_blocks: int = MAX_BLOCKS, seed: int = 0, reference: Explanation | None = None,
                            on_step: Callable[[int], object] | None = None) -> RandomizationCurve:
    """Randomise a copy of ``model`` from the logits downward, one block more per step.

    Returns the similarity of each method's map with the trained model's map after each step.
    ``reference``: the trained model's explanation of ``inputs``, if already computed (its methods
    and classes are used). ``on_step(1)`` is called after each step (a progress bar's ``update``).
    """
    return _run("cascading", model, inputs, methods, max_blocks, seed, reference, on_step)


def independent_randomization(model: nn.Module, inputs: Tensor, methods: str | Sequence[str] = "all", *,
                              max_blocks: int = MAX_BLOCKS, seed: int = 0, reference: Explanation | None = None,
                              on_step: Callable[[int], object] | None = None) -> RandomizationCurve:
    """Randomise one block of a copy of ``model`` at a time (the others trained), for each block."""
    return _run("independent", model, inputs, methods, max_blocks, seed, reference, on_step)


def _run(mode: str, model: nn.Module, inputs: Tensor, methods: str | Sequence[str], max_blocks: int, seed: int,
         reference: Explanation | None, on_step: Callable[[int], object] | None) -> RandomizationCurve:
    work = copy.deepcopy(model).eval()
    if reference is None:
        reference = explain(work, inputs, methods)
    names = list(reference)
    targets = reference.targets
    steps = blocks(work, inputs, max_blocks)
    per_step: list[dict[str, list[dict[str, float]]]] = []
    example = {m: [magnitude(reference[m][0]).astype(np.float32)] for m in names}
    for i, block in enumerate(steps):
        saved = [copy.deepcopy(m.state_dict()) for m in block.modules] if mode == "independent" else None
        randomize_(block, int(np.random.SeedSequence([seed, i]).generate_state(1)[0]))
        result = explain(work, inputs, names, target=targets)
        per_step.append({m: [map_similarity(reference[m][j], result[m][j]) for j in range(len(inputs))]
                         for m in names})
        for m in names:
            example[m].append(magnitude(result[m][0]).astype(np.float32))
        if saved is not None:
            for module, state in zip(block.modules, saved):
                module.load_state_dict(state)
        if on_step is not None:
            on_step(1)
    mean = {m: {k: [nanmean(s[k] for s in step[m]) for step in per_step] for k in METRICS}
            for m in names}
    std = {m: {k: [nanstd(s[k] for s in step[m]) for step in per_step] for k in METRICS}
           for m in names}
    left_out = {m: [sum(bool(np.isnan(s["spearman_abs"])) for s in step[m]) for step in per_step] for m in names}
    baseline = noise_baseline([reference[m][j] for m in names for j in range(len(inputs))], seed)
    return RandomizationCurve(mode=mode, steps=[b.name for b in steps], mean=mean, std=std,
                              baseline=baseline, targets=[int(t) for t in targets], left_out=left_out,
                              example=example)


def _consecutive_runs(units: list[tuple[str, list[nn.Module]]], count: int) -> list[tuple[str, list[nn.Module]]]:
    runs = []
    for part in np.array_split(np.arange(len(units)), count):
        first, last = units[part[0]][0], units[part[-1]][0]
        modules = [m for i in part for m in units[i][1]]
        runs.append((first if first == last else f"{first}..{last}", modules))
    return runs
