"""Every way of writing a ReLU gets the rule; Captum's module hooks miss the functional ones."""

import pytest
import torch
import torch.nn.functional as F
from captum.attr import GuidedBackprop
from torch import nn

import saliency

from nets import SPELLINGS, SmallNet


def _twin(spelling: str, pool: str = "module") -> SmallNet:
    torch.manual_seed(0)
    reference = SmallNet()
    net = SmallNet(spelling, pool)
    net.load_state_dict(reference.state_dict())
    return net.eval()


X = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
TARGET = torch.tensor([0, 2, 4])


@pytest.fixture(scope="module")
def reference_maps():
    return saliency.explain(_twin("nn.ReLU"), X, methods=saliency.RULE_METHODS, target=TARGET)


@pytest.mark.parametrize("spelling", SPELLINGS)
@pytest.mark.parametrize("pool", ["module", "functional"])
def test_every_spelling_gives_the_nn_relu_maps(spelling, pool, reference_maps):
    result = saliency.explain(_twin(spelling, pool), X, methods=saliency.RULE_METHODS, target=TARGET)
    assert result.relu_calls == 2 and result.max_pool_calls == 2
    for method in saliency.RULE_METHODS:
        assert torch.equal(result[method], reference_maps[method]), (spelling, pool, method)


def test_guided_and_deconvnet_differ_from_vanilla_here(reference_maps):
    assert not torch.allclose(reference_maps["guided"], reference_maps["vanilla"])
    assert not torch.allclose(reference_maps["deconvnet"], reference_maps["guided"])


def test_captum_guided_backprop_silently_returns_the_plain_gradient_for_functional_relu(reference_maps):
    """The peer failure this engine exists to avoid: documented here so it stays visible."""
    captum = GuidedBackprop(_twin("F.relu")).attribute(X.clone().requires_grad_(), target=TARGET).detach()
    assert torch.allclose(captum, reference_maps["vanilla"], atol=1e-6)
    assert not torch.allclose(captum, reference_maps["guided"], atol=1e-6)


def test_reused_inplace_relu_module_is_covered_at_every_call():
    class Reuse(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 3)
            self.relu = nn.ReLU(inplace=True)

        def forward(self, x):
            return self.b(self.relu(self.a(self.relu(x.clone()))))

    result = saliency.explain(Reuse(), torch.randn(2, 4), methods=saliency.RULE_METHODS)
    assert result.relu_calls == 2


def test_relu6_spellings_agree():
    class Net6(nn.Module):
        def __init__(self, spelling):
            super().__init__()
            self.spelling = spelling
            self.a, self.b = nn.Linear(6, 8), nn.Linear(8, 3)

        def forward(self, x):
            h = self.a(x) * 4
            h = {"module": nn.ReLU6(), "F.relu6": lambda t: F.relu6(t),
                 "F.hardtanh": lambda t: F.hardtanh(t, 0.0, 6.0), "inplace": nn.ReLU6(inplace=True)}[self.spelling](h)
            return self.b(h)

    torch.manual_seed(0)
    nets = {s: Net6(s) for s in ("module", "F.relu6", "F.hardtanh", "inplace")}
    for net in nets.values():
        net.load_state_dict(nets["module"].state_dict())
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(3))
    results = {s: saliency.explain(n, x, methods=saliency.RULE_METHODS, target=1) for s, n in nets.items()}
    for s, r in results.items():
        assert r.relu_calls == 1, s
        for method in saliency.RULE_METHODS:
            assert torch.equal(r[method], results["module"][method]), (s, method)


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_gradient_only_calls_count_the_same_layers_and_agree(spelling, reference_maps):
    result = saliency.explain(_twin(spelling, "functional"), X, methods="vanilla", target=TARGET)
    assert result.relu_calls == 2 and result.max_pool_calls == 2
    assert torch.allclose(result["vanilla"], reference_maps["vanilla"], rtol=1e-6, atol=1e-7)
