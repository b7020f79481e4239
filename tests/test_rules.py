"""Each backward rule against its equation, on inputs where the three methods differ."""

import pytest
import torch
from torch import nn

import saliency
from saliency import graph, rules

X = torch.tensor([-2.0, -0.5, 0.5, 2.0, 3.0])
G = torch.tensor([1.0, -1.0, 1.0, -1.0, 0.5])


def test_vanilla_passes_gradient_where_input_positive():
    assert rules.vanilla(G, rules.relu_gate(X)).tolist() == [0.0, 0.0, 1.0, -1.0, 0.5]


def test_deconvnet_clamps_gradient_and_ignores_forward_sign():
    assert rules.deconvnet(G, rules.relu_gate(X)).tolist() == [1.0, 0.0, 1.0, 0.0, 0.5]


def test_guided_needs_positive_input_and_positive_gradient():
    assert rules.guided(G, rules.relu_gate(X)).tolist() == [0.0, 0.0, 1.0, 0.0, 0.5]


def test_the_three_rules_differ_on_the_same_case():
    gate = rules.relu_gate(X)
    results = {tuple(f(G, gate).tolist()) for f in (rules.vanilla, rules.deconvnet, rules.guided)}
    assert len(results) == 3


def test_relu_gate_passes_where_input_positive():
    assert rules.relu_gate(X)(torch.ones(5)).tolist() == [0.0, 0.0, 1.0, 1.0, 1.0]


def test_clipped_gate_is_open_strictly_between_bounds():
    x = torch.tensor([-1.0, 0.0, 3.0, 6.0, 7.0])
    assert rules.clipped_gate(x, 0.0, 6.0)(torch.ones(5)).tolist() == [0.0, 0.0, 1.0, 0.0, 0.0]


def test_unpool_adds_every_window_a_switch_wins():
    g = torch.tensor([[[1.0, 2.0, 4.0]]])
    switches = torch.tensor([[[1, 1, 3]]])
    assert rules.unpool_max(g, switches, torch.Size([1, 1, 4]), dims=1).tolist() == [[[0.0, 3.0, 0.0, 4.0]]]


class _TwoLayer(nn.Module):
    """y = W2 · act(W1 · x), with hand-set weights so the maps can be computed by hand."""

    def __init__(self, act: nn.Module):
        super().__init__()
        self.fc1 = nn.Linear(2, 3, bias=False)
        self.act = act
        self.fc2 = nn.Linear(3, 2, bias=False)
        with torch.no_grad():
            self.fc1.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
            self.fc2.weight.copy_(torch.tensor([[1.0, -1.0, 2.0], [0.0, 1.0, -1.0]]))

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def _by_hand(rule, gate, target):
    w1 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    w2 = torch.tensor([[1.0, -1.0, 2.0], [0.0, 1.0, -1.0]])
    return rule(w2[target], gate) @ w1


def test_engine_applies_each_rule_as_written():
    x = torch.tensor([[2.0, -3.0]])  # hidden pre-activations: [2, -3, -1]
    gate = rules.relu_gate(torch.tensor([2.0, -3.0, -1.0]))
    result = saliency.explain(_TwoLayer(nn.ReLU()), x, methods=saliency.RULE_METHODS, target=0)
    for name, rule in (("vanilla", rules.vanilla), ("deconvnet", rules.deconvnet), ("guided", rules.guided)):
        assert torch.allclose(result[name][0], _by_hand(rule, gate, 0)), name
    assert result["vanilla"].tolist() == [[1.0, 0.0]]
    assert result["deconvnet"].tolist() == [[3.0, 2.0]]
    assert result["guided"].tolist() == [[1.0, 0.0]]


def test_relu6_rules_use_the_clipped_region():
    x = torch.tensor([[7.0, 2.0]])  # hidden pre-activations: [7, 2, 9]: only the middle unit is open
    gate = rules.clipped_gate(torch.tensor([7.0, 2.0, 9.0]), 0.0, 6.0)
    for act in (nn.ReLU6(), nn.Hardtanh(0.0, 6.0)):
        result = saliency.explain(_TwoLayer(act), x, methods=saliency.RULE_METHODS, target=1)
        for name, rule in (("vanilla", rules.vanilla), ("deconvnet", rules.deconvnet), ("guided", rules.guided)):
            assert torch.allclose(result[name][0], _by_hand(rule, gate, 1)), (act, name)


RULES = {"vanilla": rules.vanilla, "deconvnet": rules.deconvnet, "guided": rules.guided}


def _through_relu(rule, x, g):
    leaf = x.clone().requires_grad_()
    y = torch.relu(leaf * 1.0)
    with graph.applying(rule, graph.scan(y).relus):
        (r,) = torch.autograd.grad(y, leaf, g)
    return r


@pytest.mark.parametrize("name", RULES)
def test_a_rule_applied_at_a_relu_node_gives_its_equation(name):
    assert torch.equal(_through_relu(RULES[name], X, G), RULES[name](G, rules.relu_gate(X)))


def test_the_graph_is_left_as_autograd_made_it_when_the_block_ends_or_raises():
    leaf = X.clone().requires_grad_()
    y = torch.relu(leaf * 1.0)
    relus = graph.scan(y).relus
    with pytest.raises(RuntimeError, match="mid-backward"):
        with graph.applying(rules.guided, relus):
            raise RuntimeError("mid-backward")
    with graph.applying(rules.deconvnet, relus):
        torch.autograd.grad(y, leaf, G, retain_graph=True)
    (plain,) = torch.autograd.grad(y, leaf, G)
    assert torch.equal(plain, rules.vanilla(G, rules.relu_gate(X)))
