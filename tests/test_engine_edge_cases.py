"""Unusual but legitimate models and inputs: the engine gives the right map or a clear error."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

import saliency

from nets import SmallNet

X = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
TARGET = torch.tensor([0, 3])


def _net() -> SmallNet:
    torch.manual_seed(0)
    return SmallNet().eval()


def _plain_gradient(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    leaf = x.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(leaf).gather(1, target[:, None]).sum(), leaf)
    return grad


@pytest.mark.parametrize("under_inference_mode", [False, True])
def test_input_made_under_inference_mode(under_inference_mode):
    """A service preprocesses under ``torch.inference_mode()``, and may call explain there too."""
    net = _net()
    with torch.inference_mode():
        x = X.clone()
    expected = saliency.explain(net, X, ["vanilla", "guided"], TARGET)
    with torch.inference_mode(under_inference_mode):
        result = saliency.explain(net, x, ["vanilla", "guided", "gradcam", "smoothgrad", "integrated_gradients"],
                                  TARGET, options={"samples": 2, "steps": 2})
    for method in ("vanilla", "guided"):
        assert torch.equal(result[method], expected[method])


class _Twin(nn.Module):
    """conv → ReLU → conv → ``act`` → linear, where ``act`` is a ReLU written as something else."""

    def __init__(self, act):
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.conv2 = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3)
        self.fc = nn.Linear(4 * 12 * 12, 5)
        self.act = act

    def forward(self, x):
        return self.fc(self.act(self.conv2(F.relu(self.conv1(x)))).flatten(1))


RELUS_BY_ANOTHER_NAME = {
    "x.clamp(min=0)": lambda t: t.clamp(min=0),
    "torch.clamp(x, 0)": lambda t: torch.clamp(t, 0),
    "torch.clamp(x, min=0.0)": lambda t: torch.clamp(t, min=0.0),
    "x.clamp_(min=0)": lambda t: t.clamp_(min=0),
    "x.clamp_min(0)": lambda t: t.clamp_min(0),
    "torch.clamp_min_(x, 0)": lambda t: torch.clamp_min_(t, 0),
    "x.clip(min=0)": lambda t: t.clip(min=0),
    "F.threshold(x, 0, 0)": lambda t: F.threshold(t, 0.0, 0.0),
    "F.threshold_(x, 0, 0)": lambda t: F.threshold_(t, 0, 0),
    "nn.Threshold(0, 0)": nn.Threshold(0.0, 0.0),
}


@pytest.mark.parametrize("spelling", RELUS_BY_ANOTHER_NAME)
def test_a_relu_written_as_clamp_or_threshold_gets_the_rule(spelling):
    """Otherwise guided / DeconvNet would pass the plain gradient through it, silently."""
    expected = saliency.explain(_Twin(nn.ReLU()).eval(), X, saliency.RULE_METHODS, TARGET)
    result = saliency.explain(_Twin(RELUS_BY_ANOTHER_NAME[spelling]).eval(), X, saliency.RULE_METHODS, TARGET)
    assert result.relu_calls == 2
    for method in saliency.RULE_METHODS:
        assert torch.equal(result[method], expected[method]), method


def test_clamp_to_both_ends_from_zero_is_relu6():
    expected = saliency.explain(_Twin(nn.ReLU6()).eval(), X * 40, saliency.RULE_METHODS, TARGET)
    result = saliency.explain(_Twin(lambda t: t.clamp(0, 6)).eval(), X * 40, saliency.RULE_METHODS, TARGET)
    assert result.relu_calls == 2
    for method in saliency.RULE_METHODS:
        assert torch.equal(result[method], expected[method]), method


@pytest.mark.parametrize("act", [lambda t: t.clamp(min=-1.0), lambda t: t.clamp(min=1e-6),
                                 lambda t: F.threshold(t, 0.5, 0.0), lambda t: t.clamp(min=torch.zeros(()))])
def test_other_clamps_and_thresholds_keep_the_plain_gradient(act):
    model = _Twin(act).eval()
    result = saliency.explain(model, X, ["vanilla", "guided"], TARGET)
    assert result.relu_calls == 1
    assert torch.allclose(result["vanilla"], _plain_gradient(model, X, TARGET))


def test_a_threshold_at_zero_gets_the_rule_whatever_value_it_fills_in():
    """``threshold(x, 0, v)`` passes back ``g · [x > 0]``, the ReLU's switch: the rules apply to it."""
    model = _Twin(lambda t: F.threshold(t, 0.0, -1.0)).eval()
    result = saliency.explain(model, X, saliency.RULE_METHODS, TARGET)
    assert result.relu_calls == 2
    assert torch.allclose(result["vanilla"], _plain_gradient(model, X, TARGET))
    assert not torch.equal(result["guided"], result["vanilla"])
    assert (result["guided"] != 0).any()


class _FirstInputOnly(torch.autograd.Function):
    """``a + b`` whose backward sends nothing to ``b``: the ReLU before ``b`` gets no gradient at all."""

    @staticmethod
    def forward(ctx, a, b):
        return a + b

    @staticmethod
    def backward(ctx, g):
        return g, None


def test_a_relu_that_receives_no_gradient_is_passed_over():
    model = _Twin(lambda t: _FirstInputOnly.apply(F.relu(t), F.relu(-t))).eval()
    result = saliency.explain(model, X, saliency.RULE_METHODS, TARGET)
    assert result.relu_calls == 3
    assert torch.allclose(result["vanilla"], _plain_gradient(model, X, TARGET))
    assert not torch.equal(result["guided"], result["vanilla"])


class _Checkpointed(nn.Module):
    """conv → ReLU → max-pool under ``torch.utils.checkpoint`` (``reentrant=None``: no checkpoint), then linear."""

    def __init__(self, reentrant: bool | None):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2))
        self.fc = nn.Linear(4 * 7 * 7, 5)
        self.reentrant = reentrant

    def forward(self, x):
        if self.reentrant is None:
            return self.fc(self.features(x).flatten(1))
        return self.fc(checkpoint(self.features, x, use_reentrant=self.reentrant).flatten(1))


def test_rules_reach_into_non_reentrant_checkpoints():
    """The saved tensors are recomputed in the backward pass, but the nodes (and so the hooks) are the originals."""
    expected = saliency.explain(_Checkpointed(None).eval(), X, saliency.RULE_METHODS, TARGET)
    result = saliency.explain(_Checkpointed(False).eval(), X, saliency.RULE_METHODS, TARGET)
    assert (result.relu_calls, result.max_pool_calls) == (1, 1)
    for method in saliency.RULE_METHODS:
        assert torch.equal(result[method], expected[method]), method


@pytest.mark.parametrize("methods", [["vanilla"], ["guided"], ["smoothgrad"]])
def test_a_reentrant_checkpoint_is_one_clear_error(methods):
    with pytest.raises(saliency.SaliencyError, match="use_reentrant=False"):
        saliency.explain(_Checkpointed(True).eval(), X, methods, TARGET)


class _GatedByNoGradBranch(nn.Module):
    """A feature extractor, then a gate computed under ``torch.no_grad()`` from a later conv."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.gate = nn.Conv2d(8, 1, 3, padding=1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        f = self.features(x)
        with torch.no_grad():
            g = torch.sigmoid(self.gate(f))
        return self.fc((f * g).mean((2, 3)))


def test_gradcam_auto_skips_a_layer_run_without_gradients():
    result = saliency.explain(_GatedByNoGradBranch().eval(), X, ["gradcam"], TARGET)
    assert result.layer == "features"


class _WithUnusedAux(_GatedByNoGradBranch):
    """Also runs an auxiliary conv whose output the class scores do not use."""

    def __init__(self):
        super().__init__()
        self.aux = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        self.aux(self.features(x))
        return super().forward(x)


@pytest.mark.parametrize("layer", ["gate", "aux"])
def test_gradcam_on_a_layer_the_score_does_not_flow_through_is_a_clear_error(layer):
    """``gate`` runs under ``torch.no_grad()``; ``aux``'s output is thrown away."""
    with pytest.raises(saliency.SaliencyError, match=f"layer {layer!r}"):
        saliency.explain(_WithUnusedAux().eval(), X, ["gradcam"], TARGET, options={"layer": layer})


@pytest.fixture(scope="module")
def compiled():
    """``torch.compile(backend=...)``: ``"eager"`` runs Dynamo's captured code op by op; ``"aot_eager"``, like the
    default backend, hands the forward and backward to AOTAutograd, one opaque node in the graph (no code
    generation, so no compiler is needed)."""
    torch._dynamo.reset()
    yield lambda model, backend: torch.compile(model, backend=backend)
    torch._dynamo.reset()


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_compiled_model_gets_the_plain_gradient(compiled, backend):
    result = saliency.explain(compiled(_net(), backend), X, ["vanilla"], TARGET)
    assert torch.allclose(result["vanilla"], _plain_gradient(_net(), X, TARGET), atol=1e-6)


def test_rules_see_the_relus_of_code_dynamo_runs_op_by_op(compiled):
    expected = saliency.explain(_net(), X, saliency.RULE_METHODS, TARGET)
    result = saliency.explain(compiled(_net(), "eager"), X, saliency.RULE_METHODS, TARGET)
    assert result.relu_calls == 2
    for method in saliency.RULE_METHODS:
        assert torch.allclose(result[method], expected[method], atol=1e-6), method


@pytest.mark.parametrize("method", ["guided", "deconvnet", "guided_gradcam"])
def test_rules_are_refused_where_aotautograd_hides_the_relus(compiled, method):
    """The compiled backward is one node: a rule cannot reach its ReLUs, so no silent plain gradient."""
    with pytest.raises(saliency.SaliencyError, match="torch.compile"):
        saliency.explain(compiled(_net(), "aot_eager"), X, [method], TARGET)


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
@pytest.mark.parametrize("method", ["gradcam", "guided_gradcam"])
def test_gradcam_is_refused_on_compiled_models(compiled, backend, method):
    """Dynamo runs the layers, not their Python modules: no layer output to read."""
    with pytest.raises(saliency.SaliencyError, match="torch.compile"):
        saliency.explain(compiled(_net(), backend), X, [method], TARGET)


def test_compiled_submodule_is_refused_too(compiled):
    net = _net()
    net.conv2 = compiled(net.conv2, "aot_eager")

    class Act(nn.Module):
        def forward(self, t):
            return F.relu(t)

    net.relu = compiled(Act(), "aot_eager")
    with pytest.raises(saliency.SaliencyError, match="torch.compile"):
        saliency.explain(net, X, ["guided"], TARGET)


class _NoGradForward(SmallNet):
    @torch.no_grad()
    def forward(self, x):
        return super().forward(x)


class _InferenceForward(SmallNet):
    @torch.inference_mode()
    def forward(self, x):
        return super().forward(x)


class _DetachedInput(SmallNet):
    def forward(self, x):
        return super().forward(torch.from_numpy(x.detach().numpy()))


@pytest.mark.parametrize("model", [_NoGradForward, _InferenceForward, _DetachedInput])
@pytest.mark.parametrize("method", ["vanilla", "guided", "smoothgrad"])
def test_a_forward_with_no_gradient_to_the_input_is_a_clear_error(model, method):
    with pytest.raises(saliency.errors.ModelOutputError, match="differentiable"):
        options = {"samples": 2} if method == "smoothgrad" else None
        saliency.explain(model().eval(), X, [method], TARGET, options=options)


def test_clamp_with_out_is_left_to_torch():
    """``out=`` has no autograd: torch refuses it, and the rule must not quietly write elsewhere."""
    class Out(_Twin):
        def __init__(self):
            super().__init__(lambda t: torch.clamp(t, min=0, out=torch.empty_like(t)))

    with pytest.raises(RuntimeError, match="out="):
        saliency.explain(Out().eval(), X, ["guided"], TARGET)


@pytest.mark.parametrize("inner_methods", [["vanilla"], ["vanilla", "guided", "gradcam"]])
def test_explain_called_inside_a_forward_pass_that_is_being_explained(inner_methods):
    """The inner call's ReLUs belong to the inner call: the outer one neither counts nor swaps them."""
    class Inner(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = _net()

        def forward(self, x):
            self.inner = saliency.explain(self.net, x, inner_methods, TARGET)
            return self.net(x)

    model = Inner().eval()
    outer = saliency.explain(model, X, ["vanilla", "guided", "gradcam"], TARGET)
    alone = saliency.explain(model.net, X, ["vanilla", "guided", "gradcam"], TARGET)
    for result in (outer, model.inner):
        assert (result.relu_calls, result.max_pool_calls) == (2, 2)
        for method in result:
            assert torch.equal(result[method], alone[method]), method
    assert outer.layer == "net.conv2"


def _sequential() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 7 * 7, 5)).eval()


@pytest.mark.filterwarnings("ignore:`torch.jit.trace")
def test_rules_see_the_relus_a_traced_model_runs():
    expected = saliency.explain(_sequential(), X, saliency.RULE_METHODS, TARGET)
    traced = torch.jit.trace(_sequential(), X)
    for _ in range(3):  # the profiling executor optimises from the second run on
        result = saliency.explain(traced, X, saliency.RULE_METHODS, TARGET)
        assert (result.relu_calls, result.max_pool_calls) == (1, 1)
        for method in saliency.RULE_METHODS:
            assert torch.allclose(result[method], expected[method], atol=1e-6), method


def test_rules_are_refused_where_torchscript_fuses_the_relus_into_one_node():
    """A scripted model's optimised runs hide ReLU and max-pool in one DifferentiableGraph node."""
    scripted = torch.jit.script(_sequential())
    first = saliency.explain(scripted, X, saliency.RULE_METHODS, TARGET)  # the profiling run: ops one by one
    assert torch.allclose(first["guided"], saliency.explain(_sequential(), X, "guided", TARGET)["guided"], atol=1e-6)
    with pytest.raises(saliency.SaliencyError, match="TorchScript"):
        for _ in range(3):
            saliency.explain(scripted, X, ["guided"], TARGET)
    vanilla = saliency.explain(scripted, X, ["vanilla"], TARGET)["vanilla"]
    assert torch.allclose(vanilla, _plain_gradient(_sequential(), X, TARGET), atol=1e-6)


@pytest.mark.filterwarnings("ignore:`torch.jit.trace")
@pytest.mark.parametrize("options", [None, {"layer": "conv2"}])
def test_gradcam_on_torchscript_says_torchscript_is_opaque(options):
    """Naming a layer cannot help: the error must not send the caller round in circles."""
    traced = torch.jit.trace(_net(), X)
    vanilla = saliency.explain(traced, X, ["vanilla"], TARGET)["vanilla"]
    assert torch.allclose(vanilla, _plain_gradient(_net(), X, TARGET))
    with pytest.raises(saliency.SaliencyError, match="TorchScript"):
        saliency.explain(traced, X, ["gradcam"], TARGET, options=options)


class _AutocastInside(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = _net()

    def forward(self, x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.net(x)


@pytest.mark.parametrize("where", ["around the call", "inside the model"])
def test_autocast_gives_every_map_in_the_inputs_dtype(where):
    """Grad-CAM's weighted sum over channels is not left in bfloat16 (8 significant bits)."""
    methods = ["vanilla", "guided", "gradcam", "guided_gradcam"]
    if where == "around the call":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            result = saliency.explain(_net(), X, methods, TARGET)
    else:
        result = saliency.explain(_AutocastInside().eval(), X, methods, TARGET)
    assert {m: result[m].dtype for m in methods} == {m: X.dtype for m in methods}
    exact = saliency.explain(_net(), X, ["gradcam"], TARGET)["gradcam"]
    assert torch.allclose(result["gradcam"], exact, rtol=0.1, atol=0.1 * exact.abs().max().item())


def test_model_built_under_inference_mode_is_a_clear_error():
    with torch.inference_mode():
        model = _net()
    with pytest.raises(saliency.SaliencyError, match="inference_mode"):
        saliency.explain(model, X, ["vanilla"], TARGET)
