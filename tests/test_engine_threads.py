"""Concurrent explanations on one shared model return exactly what serial calls return."""

import itertools
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import saliency
from conftest import random_model

COMBOS = [("vanilla",), ("deconvnet",), ("guided",), ("vanilla", "guided"), ("deconvnet", "vanilla"),
          ("guided", "deconvnet", "vanilla")]


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))]


def _jobs(device="cpu"):
    inputs = [torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(s)).to(device) for s in range(3)]
    return [(combo, x, target) for combo, x, target in
            itertools.product(COMBOS, inputs, [None, [1, 2]])]


@pytest.mark.parametrize("device", DEVICES)
def test_eight_threads_mixed_methods_equal_serial(device):
    """On CUDA, autograd runs backward on its own device threads: the rule choice must still hold."""
    model = random_model("resnet18", num_classes=10).to(device)
    jobs = _jobs(device)
    serial = [saliency.explain(model, x, combo, target) for combo, x, target in jobs]
    with ThreadPoolExecutor(max_workers=8) as pool:
        threaded = list(pool.map(lambda job: saliency.explain(model, job[1], job[0], job[2]), jobs))
    for (combo, _, _), s, t in zip(jobs, serial, threaded):
        assert tuple(t) == combo
        assert torch.equal(s.targets, t.targets)
        for method in combo:
            assert torch.allclose(s[method], t[method], rtol=1e-5, atol=1e-7), method


def test_plain_autograd_in_another_thread_is_not_affected():
    """While guided backpropagation runs in some threads, a plain gradient elsewhere stays plain."""
    model = random_model("resnet18", num_classes=10)
    x = torch.randn(2, 3, 32, 32)

    def plain_gradient(_):
        xx = x.clone().requires_grad_()
        return torch.autograd.grad(model(xx)[:, 1].sum(), xx)[0]

    expected = plain_gradient(None)
    with ThreadPoolExecutor(max_workers=8) as pool:
        guided = [pool.submit(saliency.explain, model, x, "guided", 1) for _ in range(8)]
        plain = list(pool.map(plain_gradient, range(8)))
        [f.result() for f in guided]
    for g in plain:
        assert torch.allclose(g, expected, rtol=1e-5, atol=1e-7)


def test_train_mode_comes_back_after_overlapping_calls():
    model = random_model("resnet18", num_classes=10).train()
    x = torch.randn(2, 3, 32, 32)
    expected = saliency.explain(model, x, "guided", 1)["guided"]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda _: saliency.explain(model, x, "guided", 1)["guided"], range(16)))
    assert all(torch.allclose(r, expected, rtol=1e-5, atol=1e-7) for r in results)
    assert all(m.training for m in model.modules())
