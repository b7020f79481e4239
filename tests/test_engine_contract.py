"""The library contract: targets, batches, one forward pass, dtypes, clear errors."""

import dataclasses
import itertools

import pytest
import torch
from torch import nn

import saliency
from saliency.errors import InputError, ModelOutputError, TargetError, UnknownMethodError
from saliency.passes import ForwardPass
from nets import SmallNet

X = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(5))


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return SmallNet().eval()


def test_methods_registry_is_one_table():
    assert saliency.METHODS == tuple(saliency.REGISTRY)
    assert saliency.METHODS[:3] == saliency.RULE_METHODS == ("vanilla", "deconvnet", "guided")
    for name, method in saliency.REGISTRY.items():
        assert method.name == name and method.citation and method.summary


def test_default_target_is_each_samples_top1(net):
    result = saliency.explain(net, X)
    assert torch.equal(result.targets, net(X).argmax(1))
    assert tuple(result) == saliency.RULE_METHODS
    assert torch.allclose(result.probabilities.sum(1), torch.ones(4))


BATCH_INDEPENDENT = saliency.METHODS  # SmoothGrad too: each sample draws its own noise (seed + its values)


def test_per_sample_targets_equal_one_sample_at_a_time(net):
    targets = [4, 0, 2, 2]
    batch = saliency.explain(net, X, methods=BATCH_INDEPENDENT, target=targets)
    for i, t in enumerate(targets):
        alone = saliency.explain(net, X[i:i + 1], methods=BATCH_INDEPENDENT, target=t)
        for method in BATCH_INDEPENDENT:
            assert torch.allclose(batch[method][i], alone[method][0], atol=1e-6), (i, method)


@pytest.mark.parametrize("target", [3, torch.tensor(3), [3, 3, 3, 3], torch.tensor([3, 3, 3, 3])])
def test_target_spellings(net, target):
    assert saliency.explain(net, X, "vanilla", target=target).targets.tolist() == [3, 3, 3, 3]


@pytest.mark.parametrize(("target", "message"), [
    (5, "out of range"), (-1, "out of range"), ([1, 2], "one class index or 4"), (1.5, "integers")])
def test_bad_targets_are_clear_errors(net, target, message):
    with pytest.raises(TargetError, match=message):
        saliency.explain(net, X, "vanilla", target=target)


@pytest.mark.parametrize(("inputs", "message"), [
    (X.numpy(), "torch.Tensor"), (X.long(), "floating-point"), (torch.randn(16), r"\[batch"),
    (torch.randn(0, 3, 16, 16), "batch >= 1")])
def test_bad_inputs_are_clear_errors(net, inputs, message):
    with pytest.raises(InputError, match=message):
        saliency.explain(net, inputs)


def test_unknown_method_names_the_choices(net):
    with pytest.raises(UnknownMethodError, match="vanilla, deconvnet, guided, gradcam"):
        saliency.explain(net, X, methods=("guided", "lrp"))


def test_model_output_must_be_class_scores():
    with pytest.raises(ModelOutputError, match=r"\[batch=2, classes\]"):
        saliency.explain(nn.Conv2d(3, 2, 3), torch.randn(2, 3, 8, 8))


SHARED_PASS = ("vanilla", "deconvnet", "guided", "gradcam", "guided_gradcam")


def test_several_methods_share_one_forward_pass(net):
    calls = []
    net_counting = nn.Sequential(net)
    handle = net_counting.register_forward_hook(lambda *a: calls.append(1))
    try:
        result = saliency.explain(net_counting, X, methods=SHARED_PASS)
    finally:
        handle.remove()
    assert len(calls) == 1
    assert tuple(result) == SHARED_PASS


@pytest.fixture(scope="module")
def alone(net):
    return {m: saliency.explain(net, X, m, target=2)[m] for m in SHARED_PASS}


@pytest.mark.parametrize("methods", list(itertools.permutations(SHARED_PASS, 2)) + [SHARED_PASS[::-1]])
def test_methods_sharing_a_pass_in_any_order_equal_each_alone(net, alone, methods):
    """The graph is freed by the last backward pass: every mix and order of the methods that read it still works."""
    result = saliency.explain(net, X, methods, target=2)
    for m in methods:
        assert torch.equal(result[m], alone[m]), m


@pytest.mark.parametrize(("methods", "passes", "last_pass_by"), [
    (("guided",), 1, "guided"), (("vanilla", "guided"), 2, "guided"),
    (("gradcam", "guided_gradcam"), 2, "guided_gradcam"), (SHARED_PASS, 4, "gradcam")])
def test_last_planned_backward_pass_frees_the_saved_tensors(net, methods, passes, last_pass_by):
    """Like a plain backward pass, the last one does not hold the forward pass's buffers to the end."""
    chosen = saliency.methods.resolve_methods(methods)
    assert len(frozenset().union(*(m.shared_passes for m in chosen))) == passes
    run = ForwardPass(net, X, 2, capture="auto" if any(m.needs_layer for m in chosen) else None,
                      backward_passes=passes)
    last_relu = run.nodes.relus[0]  # after the layer Grad-CAM reads: every pass crosses it
    freed = False
    for method in chosen:
        method.attribute(run, {"layer": "auto"}, lambda done, total: None)
        freed = freed or method.name == last_pass_by
        if freed:
            with pytest.raises(RuntimeError, match="freed"):
                last_relu._saved_result
        else:
            assert last_relu._saved_result.shape == (4, 8, 8, 8)  # still held while a pass is to come
    with pytest.raises(RuntimeError, match="planned"):
        run.gradient(dataclasses.replace(saliency.rules.guided, name="one more"))


def test_float64_model_and_input(net):
    double = SmallNet().double().eval()
    double.load_state_dict(net.state_dict())
    x = X.double().requires_grad_()
    (expected,) = torch.autograd.grad(double(x)[:, 1].sum(), x)
    result = saliency.explain(double, X.double(), "vanilla", target=1)
    assert result["vanilla"].dtype == torch.float64
    assert torch.allclose(result["vanilla"], expected, rtol=1e-12, atol=0)


def test_input_follows_the_model_dtype(net):
    double = SmallNet().double().eval()
    assert saliency.explain(double, X, "vanilla")["vanilla"].dtype == torch.float64


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_works_inside_no_grad_and_inference_mode(net, context):
    expected = saliency.explain(net, X, "guided")["guided"]
    with context():
        assert torch.equal(saliency.explain(net, X, "guided")["guided"], expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(net):
    """Every method on CUDA equals the CPU result; SmoothGrad's noise differs by device, so it is
    held to its own seed there."""
    same_everywhere = [m for m in saliency.METHODS if m != "smoothgrad"]
    cpu = saliency.explain(net, X, methods=same_everywhere, target=1)
    gpu_net = SmallNet().cuda().eval()
    gpu_net.load_state_dict(net.state_dict())
    gpu = saliency.explain(gpu_net, X, methods="all", target=1)
    for method in same_everywhere:
        assert gpu[method].device.type == "cuda"
        assert torch.allclose(gpu[method].cpu(), cpu[method], rtol=1e-3, atol=1e-3 * cpu[method].abs().max().item())
    again = saliency.explain(gpu_net, X, methods="smoothgrad", target=1)["smoothgrad"]
    assert torch.allclose(gpu["smoothgrad"], again, rtol=1e-5, atol=1e-7)
