"""Several classes per image from one forward pass: each equals its own explain() call."""

import pytest
import torch

import saliency
from saliency.errors import TargetError
from conftest import random_model

METHODS = ["vanilla", "deconvnet", "guided", "gradcam", "guided_gradcam", "smoothgrad", "integrated_gradients"]
OPTIONS = {"samples": 3, "steps": 4}


def _forward_calls(model):
    calls = []
    return calls, model.register_forward_pre_hook(lambda module, args: calls.append(len(args[0])))


@pytest.fixture(scope="module")
def x():
    return torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def test_topk_ranks_equal_separate_calls_for_each_rank(resnet18, x):
    results = saliency.explain_classes(resnet18, x, METHODS, topk=3, options=OPTIONS)
    ranked = resnet18(x).topk(3, dim=1).indices
    assert len(results) == 3
    for k, result in enumerate(results):
        assert torch.equal(result.targets, ranked[:, k])
        alone = saliency.explain(resnet18, x, METHODS, target=ranked[:, k], options=OPTIONS)
        for method in METHODS:
            assert torch.allclose(result[method], alone[method], rtol=1e-5, atol=1e-7), (k, method)


def test_fixed_targets_equal_separate_calls(resnet18, x):
    targets = [4, [1, 2, 3], None]
    results = saliency.explain_classes(resnet18, x, ["guided", "gradcam"], targets)
    for target, result in zip(targets, results):
        alone = saliency.explain(resnet18, x, ["guided", "gradcam"], target)
        assert torch.equal(result.targets, alone.targets)
        assert torch.allclose(result["guided"], alone["guided"], atol=1e-7)
        assert torch.allclose(result["gradcam"], alone["gradcam"], atol=1e-7)


def test_the_rule_methods_run_the_model_once_for_every_class(resnet18, x):
    calls, handle = _forward_calls(resnet18)
    try:
        saliency.explain_classes(resnet18, x, ["vanilla", "deconvnet", "guided", "gradcam"], topk=4)
    finally:
        handle.remove()
    assert calls == [len(x)]


def test_the_graph_is_freed_by_the_last_planned_backward_pass(resnet18, x):
    results = saliency.explain_classes(resnet18, x, ["guided", "gradcam"], topk=2)
    assert len(results) == 2  # a pass beyond the plan would raise; the last one frees the graph


def test_only_the_first_explanation_counts_the_forward_pass(resnet18, x):
    first, second = saliency.explain_classes(resnet18, x, "vanilla", topk=2)
    assert first.seconds["forward"] > 0 and second.seconds["forward"] == 0.0
    assert torch.equal(first.logits, second.logits)


@pytest.mark.parametrize("kwargs, message", [({"topk": 11}, "more than the model's 10 classes"),
                                             ({"topk": 0}, "at least 1"),
                                             ({"targets": []}, "no target given"),
                                             ({"targets": [1, 10]}, "out of range")])
def test_bad_class_choices_are_clear_errors(resnet18, x, kwargs, message):
    with pytest.raises(TargetError, match=message):
        saliency.explain_classes(resnet18, x, "guided", **kwargs)
