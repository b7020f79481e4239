"""Activations with no DeconvNet / guided rule are named, never passed over silently."""

import pytest
import torch
from torch import nn

import saliency
from saliency.errors import NoReluError
from conftest import random_model


def test_efficientnet_reports_silu_and_refuses_guided_without_any_relu():
    model = random_model("efficientnet_b0", num_classes=10)
    x = torch.randn(1, 3, 32, 32)
    result = saliency.explain(model, x, methods="vanilla")
    assert result.relu_calls == 0
    assert result.activations["silu"] == 49 and result.activations["sigmoid"] == 16
    with pytest.raises(NoReluError, match="silu"):
        saliency.explain(model, x, methods=("vanilla", "guided"))


def test_mixed_activations_warn_and_are_listed_in_the_result():
    model = random_model("mobilenet_v3_small", num_classes=10)
    with pytest.warns(saliency.UnsupportedActivationWarning, match="hardswish"):
        result = saliency.explain(model, torch.randn(1, 3, 32, 32), methods="guided")
    assert result.relu_calls > 0
    assert {"hardswish", "hardsigmoid"} <= set(result.activations)
    assert any("hardswish" in w for w in result.warnings)


@pytest.mark.parametrize("act", [nn.GELU(), nn.SiLU(), nn.LeakyReLU(), nn.ELU(), nn.Sigmoid(), nn.Tanh(), nn.Mish()])
def test_each_activation_module_is_named(act):
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), act, nn.Linear(4, 2))
    with pytest.warns(saliency.UnsupportedActivationWarning):
        result = saliency.explain(model, torch.randn(2, 4), methods="deconvnet")
    assert len(result.activations) == 1


def test_vanilla_alone_does_not_warn_but_still_lists():
    model = nn.Sequential(nn.Linear(4, 4), nn.GELU(), nn.Linear(4, 2))
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = saliency.explain(model, torch.randn(2, 4), methods="vanilla")
    assert result.activations == {"gelu": 1} and result.warnings == ()
