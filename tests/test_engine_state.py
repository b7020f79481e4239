"""The model is left exactly as it was — after success and after an exception mid-backward."""

import pytest
import torch
from torch import nn

import saliency


class _Boom(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        raise RuntimeError("boom in backward")


class _Explodes(nn.Module):
    """Identity forward, raises in backward."""

    def forward(self, x):
        return _Boom.apply(x)


def _model(explode: bool = False) -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(inplace=True), nn.Dropout(0.5),
              nn.MaxPool2d(2), nn.Flatten(), nn.LazyLinear(3)]
    if explode:
        layers.insert(1, _Explodes())
    model = nn.Sequential(*layers)
    model(torch.randn(2, 3, 10, 10))  # materialise the lazy layer
    model[-1].weight.requires_grad_(False)  # a frozen layer: its flag must stay as it is
    return model.train()


def _snapshot(model: nn.Module) -> dict:
    return {
        "modules": [(name, type(m), id(m), m.training, getattr(m, "inplace", None)) for name, m in model.named_modules()],
        "hooks": [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks),
                   len(m._backward_pre_hooks)) for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [p.grad for p in model.parameters()],
        "state": {k: v.clone() for k, v in model.state_dict().items()},
    }


def _assert_unchanged(before: dict, model: nn.Module) -> None:
    after = _snapshot(model)
    assert after["modules"] == before["modules"]
    assert after["hooks"] == before["hooks"]
    assert after["requires_grad"] == before["requires_grad"]
    assert all(g is None for g in after["grads"])
    assert before["state"].keys() == after["state"].keys()
    for key in before["state"]:
        assert torch.equal(before["state"][key], after["state"][key]), key  # BN running stats included
    assert torch._C._len_torch_function_stack() == 0


def test_model_untouched_after_success():
    model = _model()
    before = _snapshot(model)
    x = torch.randn(2, 3, 10, 10)
    x_before = x.clone()
    result = saliency.explain(model, x, methods="all")
    _assert_unchanged(before, model)
    assert torch.equal(x, x_before) and x.grad is None and not x.requires_grad
    assert all(not m.requires_grad for m in result.values())


def test_explained_in_eval_mode_whatever_the_mode_it_was_in():
    model = _model()
    x = torch.randn(2, 3, 10, 10)
    in_train = saliency.explain(model, x, "vanilla", target=0)["vanilla"]
    in_eval = saliency.explain(model.eval(), x, "vanilla", target=0)["vanilla"]
    assert torch.equal(in_train, in_eval)  # dropout off, BN uses running statistics


def test_model_untouched_after_exception_mid_backward():
    model = _model(explode=True)
    before = _snapshot(model)
    x = torch.randn(2, 3, 10, 10, requires_grad=True)
    with pytest.raises(RuntimeError, match="boom in backward"):
        saliency.explain(model, x, methods="all")
    _assert_unchanged(before, model)
    assert x.grad is None


def test_model_untouched_after_exception_mid_forward():
    model = _model()
    before = _snapshot(model)
    with pytest.raises(RuntimeError):
        saliency.explain(model, torch.randn(2, 5, 10, 10))  # wrong channel count
    _assert_unchanged(before, model)


def test_in_place_relu_on_the_input_does_not_touch_the_callers_tensor():
    model = nn.Sequential(nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(12, 2))
    x = torch.randn(1, 3, 2, 2)
    x_before = x.clone()
    no_conv_layer_needed = [name for name, m in saliency.REGISTRY.items() if not m.needs_layer]
    saliency.explain(model, x, methods=no_conv_layer_needed)
    assert torch.equal(x, x_before)


def test_repeated_calls_do_not_accumulate():
    model = _model().eval()
    x = torch.randn(2, 3, 10, 10)
    first = saliency.explain(model, x, "guided")["guided"]
    second = saliency.explain(model, x, "guided")["guided"]
    assert torch.equal(first, second)


def test_no_graph_outlives_the_call():
    """The forward graph (and every activation it holds) is freed when explain returns."""
    import gc
    import warnings

    from saliency.passes import ForwardPass

    model = _model().eval()
    result = saliency.explain(model, torch.randn(2, 3, 10, 10), methods="all", options={"samples": 2, "steps": 2})
    gc.collect()
    with warnings.catch_warnings():  # looking at every live object wakes deprecated torch aliases
        warnings.simplefilter("ignore")
        assert not [o for o in gc.get_objects() if isinstance(o, ForwardPass)]
    assert all(m.grad_fn is None for m in result.values())
