"""Max-pool backward is unpooling with the forward switches, scatter-added: it equals autograd."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import saliency
from saliency import graph, rules

POOLS = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}
CONFIGS = [  # kernel, stride, padding, dilation, ceil_mode
    (2, 2, 0, 1, False),  # non-overlapping
    (3, 2, 1, 1, False),  # overlapping: ResNet's stem
    (3, 2, 0, 1, True),  # overlapping, ceil_mode: AlexNet-like
    (3, 1, 1, 1, False),  # heavily overlapping
    (2, 1, 0, 2, False),  # dilation
    (3, 3, 1, 1, True),  # ceil_mode with padding
]
SIZES = {1: (2, 3, 11), 2: (2, 3, 9, 10), 3: (1, 2, 7, 6, 5)}


def _tied_input(shape, seed):
    """Few distinct values, so many windows hold ties."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 3, shape, generator=g).double()


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("config", CONFIGS)
def test_autograd_max_pool_backward_is_unpooling_with_the_stored_switches(dims, config):
    """The switches are the argmax indices the forward pass saved in the graph; scatter-adding through them
    (``rules.unpool_max``) gives exactly autograd's gradient, which is what every method passes back."""
    kernel, stride, padding, dilation, ceil_mode = config
    pool = POOLS[dims](kernel, stride, padding, dilation, ceil_mode=ceil_mode)
    for seed in range(3):
        x = _tied_input(SIZES[dims], seed).requires_grad_()
        y = pool(x)
        g = torch.randn(y.shape, dtype=torch.double, generator=torch.Generator().manual_seed(seed))
        (expected,) = torch.autograd.grad(y, x, g, retain_graph=True)
        (node,) = graph.scan(y).max_pools  # a 1-D pool runs as a 2-D one between an unsqueeze and a squeeze
        switches, pooled = node._saved_result1, node._saved_self
        unpooled = rules.unpool_max(g.reshape(switches.shape), switches, pooled.shape, dims=pooled.dim() - 2)
        assert torch.equal(unpooled.reshape(x.shape), expected)


def test_unpool_max_rule_matches_autograd_directly():
    x = _tied_input((2, 3, 9, 9), 0).requires_grad_()
    y, switches = F.max_pool2d(x, 3, 2, 1, return_indices=True)
    g = torch.randn_like(y)
    (expected,) = torch.autograd.grad(y, x, g)
    assert torch.equal(rules.unpool_max(g, switches, x.shape, dims=2), expected)


def test_assigning_unpool_loses_gradient_on_overlapping_windows():
    """The documented failure of F.max_unpool2d as a backward pass; the scatter-add rule does not have it."""
    x = _tied_input((1, 1, 9, 9), 1).requires_grad_()
    y, switches = F.max_pool2d(x, 3, 2, 1, return_indices=True)
    g = torch.ones_like(y)
    (expected,) = torch.autograd.grad(y, x, g)
    assigned = F.max_unpool2d(g, switches, 3, 2, 1, output_size=x.shape[-2:])
    assert not torch.equal(assigned, expected)
    assert assigned.sum() < expected.sum()
    assert torch.equal(rules.unpool_max(g, switches, x.shape, dims=2), expected)


MAX_POOL_SPELLINGS = {
    "module": nn.MaxPool2d(3, 2, 1),
    "module_indices": lambda t: nn.MaxPool2d(3, 2, 1, return_indices=True)(t)[0],
    "functional": lambda t: F.max_pool2d(t, 3, 2, 1),
    "functional_indices": lambda t: F.max_pool2d(t, 3, 2, 1, return_indices=True)[0],
    "torch": lambda t: torch.max_pool2d(t, [3, 3], [2, 2], [1, 1]),
    "adaptive": lambda t: F.adaptive_max_pool2d(t, 3),
}


@pytest.mark.parametrize("spelling", MAX_POOL_SPELLINGS)
def test_every_max_pool_spelling_is_seen(spelling):
    x = _tied_input((1, 2, 8, 8), 2).requires_grad_()
    assert graph.scan(MAX_POOL_SPELLINGS[spelling](x)).max_pool_calls == 1


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_max_pools_are_counted_in_every_dimension(dims):
    x = _tied_input(SIZES[dims], 0).requires_grad_()
    assert graph.scan(POOLS[dims](2)(x)).max_pool_calls == 1


class _AvgNet(nn.Module):
    def __init__(self, functional: bool):
        super().__init__()
        self.functional = functional
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.avg = nn.AvgPool2d(3, 2, 1)
        self.adaptive = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = self.avg(torch.relu(self.conv(x)))
        x = F.adaptive_avg_pool2d(x, 2) if self.functional else self.adaptive(x)
        return self.fc(x.flatten(1))


@pytest.mark.parametrize("functional", [False, True])
def test_average_pools_spread_the_gradient_as_autograd_does(functional):
    torch.manual_seed(0)
    model = _AvgNet(functional).double()
    x = torch.randn(2, 3, 11, 11, dtype=torch.double)
    x_ref = x.clone().requires_grad_()
    (expected,) = torch.autograd.grad(model(x_ref)[:, 3].sum(), x_ref)
    assert torch.allclose(saliency.explain(model, x, "vanilla", target=3)["vanilla"], expected, rtol=1e-12, atol=0)
