"""Engine benchmark: our methods against bare autograd and Captum, printed as ratios.

    python bench/methods.py [--models vgg16 resnet50] [--batches 1 8] [--repeats 7] [--device cpu|cuda]

Every variant runs in the same process on the same random-init model and inputs; repetitions are
interleaved (every variant once per round, in a freshly shuffled order) so that drift in machine
load, and what the variant before leaves behind (memory to free or reuse), hit all of them alike;
each figure is a median. Ratios, not seconds, are what to compare across machines.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
import warnings
from typing import Callable

import torch
import torchvision
from captum.attr import Deconvolution, GuidedBackprop, Saliency

import saliency

RULES = ("vanilla", "deconvnet", "guided")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bare_forward_backward(model, x, target, backward_passes: int = 1) -> None:
    """One forward pass and ``backward_passes`` input-only backward passes, stock autograd."""
    leaf = x.detach().requires_grad_()
    score = model(leaf).gather(1, target[:, None]).sum()
    for i in range(backward_passes):
        torch.autograd.grad(score, leaf, retain_graph=i < backward_passes - 1)


def variants(model, x, target) -> dict[str, Callable[[], object]]:
    captum = {"vanilla": Saliency(model), "deconvnet": Deconvolution(model), "guided": GuidedBackprop(model)}
    table: dict[str, Callable[[], object]] = {
        "bare fwd+bwd": lambda: bare_forward_backward(model, x, target),
        "bare fwd+3 bwd": lambda: bare_forward_backward(model, x, target, 3),
    }
    for name in RULES:
        kwargs = {"abs": False} if name == "vanilla" else {}
        table[f"captum {name}"] = (lambda c=captum[name], kw=kwargs:
                                   c.attribute(x.detach().clone().requires_grad_(), target=target, **kw))
        table[f"ours {name}"] = lambda n=name: saliency.explain(model, x, n, target)
    table["captum all 3 calls"] = lambda: [table[f"captum {n}"]() for n in RULES]
    table["ours all 3 at once"] = lambda: saliency.explain(model, x, RULES, target)
    return table


def measure(table: dict[str, Callable[[], object]], repeats: int, device: torch.device) -> dict[str, float]:
    for run in table.values():  # warm-up
        run()
    times: dict[str, list[float]] = {name: [] for name in table}
    order, shuffle = list(table), random.Random(0).shuffle
    for _ in range(repeats):
        shuffle(order)
        for name in order:
            run = table[name]
            _sync(device)
            start = time.perf_counter()
            run()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def report(model_name: str, batch: int, t: dict[str, float]) -> None:
    print(f"\n{model_name}, batch {batch}, 224x224 — median seconds and ratios")
    for name, seconds in t.items():
        print(f"  {name:<22} {seconds * 1000:9.1f} ms")
    bare, three = t["bare fwd+bwd"], t["bare fwd+3 bwd"]
    for name in RULES:
        print(f"  {name:<10} ours / bare fwd+bwd = {t[f'ours {name}'] / bare:5.2f}   "
              f"ours / captum = {t[f'ours {name}'] / t[f'captum {name}']:5.2f}")
    print(f"  all three  ours / (fwd + 3 bwd)  = {t['ours all 3 at once'] / three:5.2f}   "
          f"ours / captum's 3 calls = {t['ours all 3 at once'] / t['captum all 3 calls']:5.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["vgg16", "resnet50"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    warnings.filterwarnings("ignore")  # Captum's per-call notices about hooks
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {name}")
    for model_name in args.models:
        torch.manual_seed(0)
        model = torchvision.models.get_model(model_name, weights=None).eval().to(device)
        for batch in args.batches:
            x = torch.randn(batch, 3, 224, 224, device=device)
            target = torch.arange(batch, device=device) % 1000
            report(model_name, batch, measure(variants(model, x, target), args.repeats, device))


if __name__ == "__main__":
    main()
