"""The engine on real architectures: vanilla equals autograd; DeconvNet / guided equal Captum's."""

import pytest
import torch
from captum.attr import Deconvolution, GuidedBackprop

import saliency
from conftest import random_model

# name -> (constructor kwargs, input side): the smallest inputs each architecture accepts comfortably.
ARCHITECTURES = {
    "vgg16": ({}, 32),
    "resnet18": ({}, 32),
    "alexnet": ({}, 64),
    "densenet121": ({}, 32),
    "inception_v3": ({"init_weights": True, "aux_logits": False}, 75),
    "mobilenet_v2": ({}, 32),
    "squeezenet1_1": ({}, 64),
}


def _autograd_gradient(model, x, target):
    x = x.clone().requires_grad_()
    scores = model(x).gather(1, target[:, None]).sum()
    return torch.autograd.grad(scores, x)[0]


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_vanilla_equals_autograd(name):
    kwargs, side = ARCHITECTURES[name]
    model = random_model(name, num_classes=10, **kwargs)
    x = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(1))
    target = torch.tensor([3, 7])
    result = saliency.explain(model, x, methods=saliency.RULE_METHODS, target=target)
    assert result.relu_calls > 0
    assert torch.allclose(result["vanilla"], _autograd_gradient(model, x, target), rtol=1e-5, atol=1e-7)
    for method in saliency.RULE_METHODS:
        assert result[method].shape == x.shape and torch.isfinite(result[method]).all()


@pytest.mark.parametrize("fixture", ["vgg16", "resnet18"])
@pytest.mark.parametrize(("method", "captum_class"), [("deconvnet", Deconvolution), ("guided", GuidedBackprop)])
def test_rules_equal_captum_on_module_relus(fixture, method, captum_class, request):
    model = request.getfixturevalue(fixture)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    target = torch.tensor([1, 4])
    ours = saliency.explain(model, x, methods=method, target=target)[method]
    theirs = captum_class(model).attribute(x.clone().requires_grad_(), target=target).detach()
    assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-5 * theirs.abs().max().item())
    assert not torch.allclose(ours, _autograd_gradient(model, x, target))


def test_inception_v3_functional_relus_and_pools_are_all_covered():
    model = random_model("inception_v3", num_classes=10, init_weights=True, aux_logits=False)
    result = saliency.explain(model, torch.randn(1, 3, 75, 75), methods="guided")
    assert result.relu_calls == 94  # every BasicConv2d calls F.relu
    assert result.max_pool_calls == 4  # F.max_pool2d in the stem and the reduction blocks
