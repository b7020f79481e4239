"""Grad-CAM reads the named layer's own output, even when later ops work on it in place (checked against Captum)."""

import pytest
import torch
import torch.nn.functional as F
from captum.attr import LayerGradCam
from torch import nn

import saliency
from conftest import random_model


def _captum_gradcam(model: nn.Module, layer: str, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Captum's LayerGradCam on ``layer``, upsampled as ours is (bilinear, to the input's size)."""
    cam = LayerGradCam(model, model.get_submodule(layer)).attribute(x, target=target, relu_attributions=True)
    return F.interpolate(cam, size=x.shape[2:], mode="bilinear", align_corners=False).detach().expand_as(x)


def _assert_matches_captum(model: nn.Module, x: torch.Tensor, target: torch.Tensor, layer: str = "auto") -> str:
    result = saliency.explain(model, x, "gradcam", target=target, options={"layer": layer})
    expected = _captum_gradcam(model, result.layer, x, target)
    scale = expected.abs().max().item()
    assert scale > 0
    assert torch.allclose(result["gradcam"], expected, rtol=1e-4, atol=1e-5 * scale), (
        f"max difference {(result['gradcam'] - expected).abs().max().item() / scale:.3g} of the map's maximum")
    return result.layer


def _conv_relu_net(inplace: bool) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(inplace=inplace), nn.Flatten(), nn.Linear(8, 4)).eval()


X_SMALL = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("inplace", [True, False])
def test_the_conv_before_a_module_relu_gives_its_own_map_in_place_or_not(inplace):
    net = _conv_relu_net(inplace)
    conv_output = net[0](X_SMALL)
    assert (conv_output < 0).any(), "the example needs negative pre-activations to tell conv and ReLU apart"
    _assert_matches_captum(net, X_SMALL, torch.tensor([0]), layer="0")


def test_in_place_relu_leaves_the_conv_map_what_it_is_without_it():
    target = torch.tensor([0])
    in_place, copying = (saliency.explain(_conv_relu_net(flag), X_SMALL, "gradcam", target, options={"layer": "0"})
                         for flag in (True, False))
    of_the_relu = saliency.explain(_conv_relu_net(False), X_SMALL, "gradcam", target, options={"layer": "1"})
    assert torch.equal(in_place["gradcam"], copying["gradcam"])
    assert not torch.allclose(in_place["gradcam"], of_the_relu["gradcam"])


class _InPlaceAfterLayers(nn.Module):
    """A residual block written with functional in-place ops after the layers Grad-CAM reads."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.skip = nn.Conv2d(3, 8, 1)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.conv1(x), inplace=True)
        out = self.conv2(out)
        out += self.skip(x)
        out = out.relu_()
        return self.head(out.mean(dim=(2, 3)))


@pytest.mark.parametrize("layer", ["conv1", "conv2", "skip", "auto"])
def test_functional_in_place_ops_and_residual_sums_do_not_reach_the_captured_output(layer):
    x = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(2))
    chosen = _assert_matches_captum(_InPlaceAfterLayers().eval(), x, torch.tensor([1, 4]), layer=layer)
    if layer == "auto":
        assert chosen == "skip"  # the last module with parameters to return a 4-D map


@pytest.fixture(scope="module")
def x128() -> torch.Tensor:
    return torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name, auto_layer", [("densenet121", "features"), ("squeezenet1_1", "classifier.1"),
                                              ("resnet18", "layer4")])
def test_torchvision_models_at_the_auto_layer_match_captum(name, auto_layer, x128):
    model = random_model(name, num_classes=10)
    assert _assert_matches_captum(model, x128, torch.tensor([3, 7])) == auto_layer


def test_resnet18_inside_a_block_before_the_residual_sum_matches_captum(resnet18, x128):
    assert _assert_matches_captum(resnet18, x128, torch.tensor([3, 7]), layer="layer4.1.bn2") == "layer4.1.bn2"


def test_guided_gradcam_multiplies_guided_by_the_layer_s_own_map(resnet18, x128):
    target = torch.tensor([1, 2])
    result = saliency.explain(resnet18, x128, ["guided", "guided_gradcam"], target, options={"layer": "layer4.1.bn2"})
    expected = result["guided"] * _captum_gradcam(resnet18, "layer4.1.bn2", x128, target)[:, :1]
    assert torch.allclose(result["guided_gradcam"], expected, rtol=1e-4, atol=1e-6 * expected.abs().max().item())


def test_capturing_changes_no_other_method(resnet18, x128):
    """The copy handed on to the rest of the model leaves every other map as it is without Grad-CAM."""
    target = torch.tensor([4, 9])
    methods = ["vanilla", "deconvnet", "guided"]
    alone = saliency.explain(resnet18, x128, methods, target)
    with_cam = saliency.explain(resnet18, x128, methods + ["gradcam"], target, options={"layer": "layer4.1.bn2"})
    for method in methods:
        assert torch.equal(alone[method], with_cam[method]), method
    assert torch.equal(alone.logits, with_cam.logits)


class _NormalisesInPlace(nn.Module):
    """A model that works on its own input in place, as some preprocessing-in-the-model code does."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x.sub_(0.5).mul_(2.0)
        return self.head(self.conv(x).relu().mean(dim=(2, 3)))


def test_evaluation_walks_of_the_model_leave_the_inputs_as_they_were():
    from saliency.evaluation import blocks

    x = torch.rand(2, 3, 10, 10, generator=torch.Generator().manual_seed(0))
    before = x.clone()
    assert [b.name for b in blocks(_NormalisesInPlace().eval(), x)]
    assert torch.equal(x, before)


@pytest.mark.parametrize("method", ["vanilla", "guided", "gradcam", "smoothgrad", "integrated_gradients"])
def test_explain_leaves_inputs_a_model_works_on_in_place_untouched(method):
    x = torch.rand(2, 3, 10, 10, generator=torch.Generator().manual_seed(0))
    before = x.clone()
    options = {"smoothgrad": {"samples": 2}, "integrated_gradients": {"steps": 2}}.get(method)
    saliency.explain(_NormalisesInPlace().eval(), x, method, 1, options=options)
    assert torch.equal(x, before)


@pytest.mark.parametrize("name, forward_passes", [("resnet18", 1), ("squeezenet1_1", 2)])
def test_auto_runs_the_model_again_only_when_a_later_op_changed_its_layer_in_place(name, forward_passes):
    model = random_model(name, num_classes=10)
    calls = []
    handle = model.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        saliency.explain(model, torch.randn(1, 3, 64, 64), "gradcam")
    finally:
        handle.remove()
    assert len(calls) == forward_passes
