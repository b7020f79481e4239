"""Units as targets: a channel, a position, or each image's strongest position of a named layer."""

import pytest
import torch
import torch.nn.functional as F
from captum.attr import LayerGradCam, NeuronDeconvolution, NeuronGuidedBackprop
from torch import nn

import saliency
from nets import SmallNet
from saliency.errors import OptionError, TargetError
from saliency.units import Unit

X64 = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
for _i, (_r, _c) in enumerate([(4, 40), (36, 8), (40, 44)]):  # a bright patch in another place in each image
    X64[_i, :, _r:_r + 16, _c:_c + 16] += 4.0


def _grad(value: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.autograd.grad(value, x)[0]


def _unit_value(a: torch.Tensor, channel: int, form: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The unit's value summed over the batch, straight from the layer's output, and each sample's (row, col)."""
    plane = a[:, channel].flatten(1)
    if form == "channel":
        return plane.sum(), None
    if form == "position":
        index = torch.full((len(a),), 2 * a.shape[3] + 1)
    else:
        index = plane.detach().argmax(dim=1)
    return plane.gather(1, index[:, None]).sum(), torch.stack([index // a.shape[3], index % a.shape[3]], dim=1)


FORMS = {"channel": "", "position": "@2,1", "max": "@max"}


def _check_vanilla(model, layer, x, own_output, channel, form):
    leaf = x.clone().requires_grad_(True)
    value, positions = _unit_value(own_output(leaf), channel, form)
    expected = _grad(value, leaf)
    result = saliency.explain(model, x, "vanilla", f"{layer}:{channel}{FORMS[form]}")
    assert result.unit == Unit(layer, channel, None if form == "channel" else (2, 1) if form == "position" else "max")
    assert (result.targets == -1).all()
    assert expected.abs().max() > 0
    torch.testing.assert_close(result["vanilla"], expected, rtol=1e-4, atol=1e-6 * expected.abs().max().item())
    if positions is not None:
        assert torch.equal(result.unit_positions, positions)
    return result


@pytest.mark.parametrize("form", ["channel", "position", "max"])
def test_vanilla_of_a_vgg16_unit_is_its_autograd_gradient(vgg16, form):
    """features.28 is a convolution whose output the next ReLU changes in place: the unit is the convolution's."""
    result = _check_vanilla(vgg16, "features.28", X64, lambda leaf: vgg16.features[:29](leaf), 7, form)
    if form == "max":
        assert len({tuple(p) for p in result.unit_positions.tolist()}) > 1, "each image gets its own maximum"


def _resnet_bn2(model):
    """layer2.0.bn2's own output; the block then adds the shortcut to it in place (out += identity)."""
    def own_output(leaf):
        h = model.layer1(model.maxpool(model.relu(model.bn1(model.conv1(leaf)))))
        block = model.layer2[0]
        return block.bn2(block.conv2(block.relu(block.bn1(block.conv1(h)))))
    return own_output


@pytest.mark.parametrize("form", ["channel", "position", "max"])
def test_vanilla_of_a_resnet18_unit_is_its_autograd_gradient(resnet18, form):
    result = _check_vanilla(resnet18, "layer2.0.bn2", X64, _resnet_bn2(resnet18), 11, form)
    if form == "max":
        assert len({tuple(p) for p in result.unit_positions.tolist()}) > 1, "each image gets its own maximum"


def test_a_unit_before_an_in_place_op_differs_from_the_unit_after_it(resnet18):
    """The block's output (after += and ReLU) is another unit than bn2's: reading bn2 must not see them."""
    own = saliency.explain(resnet18, X64[:1], "vanilla", "layer2.0.bn2:11")["vanilla"]
    after = saliency.explain(resnet18, X64[:1], "vanilla", "layer2.0:11")["vanilla"]
    assert not torch.allclose(own, after)


@pytest.mark.parametrize("method, captum", [("deconvnet", NeuronDeconvolution), ("guided", NeuronGuidedBackprop)])
@pytest.mark.parametrize("model, layer", [("vgg16", "features.29"), ("resnet18", "layer3.0")])
def test_deconvnet_and_guided_of_a_unit_equal_captums_neuron_methods(request, model, layer, method, captum):
    net = request.getfixturevalue(model)
    x = X64[:2]
    with torch.no_grad():
        own = {}
        handle = net.get_submodule(layer).register_forward_hook(lambda m, i, o: own.setdefault("a", o.clone()))
        net(x)
        handle.remove()
    strongest = own["a"][:, 3].flatten(1).argmax(dim=1)
    width = own["a"].shape[3]
    cases = {
        "@1,2": (3, 1, 2),
        "": lambda out: out[:, 3].sum(dim=(1, 2)),
        "@max": lambda out: out[:, 3].flatten(1).gather(1, strongest[:, None])[:, 0],
    }
    attributor = captum(net, net.get_submodule(layer))
    for where, selector in cases.items():
        expected = attributor.attribute(x, neuron_selector=selector)
        got = saliency.explain(net, x, method, f"{layer}:3{where}")
        if where == "@max":
            assert got.unit_positions.tolist() == [[int(i) // width, int(i) % width] for i in strongest]
        torch.testing.assert_close(got[method], expected, rtol=1e-4, atol=1e-6 * max(expected.abs().max().item(), 1e-6))
    assert expected.abs().max() > 0


@pytest.mark.parametrize("method, captum", [("deconvnet", NeuronDeconvolution), ("guided", NeuronGuidedBackprop)])
def test_the_functional_twin_gives_the_same_unit_maps(method, captum):
    torch.manual_seed(0)
    module_net = SmallNet("nn.ReLU").eval()
    functional_net = SmallNet("F.relu").eval()
    functional_net.load_state_dict(module_net.state_dict())
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    expected = captum(module_net, module_net.conv2).attribute(x, neuron_selector=(4, 3, 5))
    for net in (module_net, functional_net):
        torch.testing.assert_close(saliency.explain(net, x, method, "conv2:4@3,5")[method], expected)
    assert not torch.allclose(expected, saliency.explain(module_net, x, "vanilla", "conv2:4@3,5")["vanilla"])


def _window_net() -> nn.Module:
    """ReLU, then a 2×2 convolution of ones: the activation at (i, j) is the sum of the ReLU'd 2×2 window there."""
    conv = nn.Conv2d(1, 1, 2, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    return nn.Sequential(nn.ReLU(), conv, nn.Flatten(), nn.Linear(9, 2)).eval()


def test_at_max_projects_only_the_strongest_activation():
    x = torch.tensor([[0.1, 0.2, 0.0, 0.0],
                      [0.3, 0.9, -0.5, 0.0],
                      [0.0, 0.0, 0.1, 0.2],
                      [0.0, 0.0, 0.2, 0.3]])
    y = torch.rot90(x, 2)  # the second image's strongest window is the mirror of the first's
    batch = torch.stack([x, y])[:, None]
    result = saliency.explain(_window_net(), batch, ("vanilla", "deconvnet"), "1:0@max")
    assert result.unit_positions.tolist() == [[0, 0], [2, 2]]
    assert result.unit_values.tolist() == pytest.approx([1.5, 1.5])
    window = torch.zeros(2, 1, 4, 4)
    window[0, 0, 0:2, 0:2] = 1.0
    window[1, 0, 2:4, 2:4] = 1.0
    assert torch.equal(result["deconvnet"], window)  # DeconvNet ignores the forward sign: the whole window
    assert torch.equal(result["vanilla"], window * (batch > 0))  # the gradient: the window where the ReLU let x through
    whole = saliency.explain(_window_net(), batch, "deconvnet", "1:0")["deconvnet"]
    assert (whole > 0).sum() > (result["deconvnet"] > 0).sum(), "the whole channel reads far more of the image"


def test_a_unit_of_a_linear_layer():
    torch.manual_seed(0)
    net = SmallNet().eval()
    x = torch.randn(2, 3, 16, 16)
    by_unit = saliency.explain(net, x, "vanilla", Unit("fc", 2))
    by_class = saliency.explain(net, x, "vanilla", 2)
    torch.testing.assert_close(by_unit["vanilla"], by_class["vanilla"])
    assert by_unit.unit_positions is None and by_unit.unit_values.shape == (2,)


def test_several_units_and_a_class_from_one_forward_pass():
    torch.manual_seed(0)
    net = SmallNet().eval()
    x = torch.randn(2, 3, 16, 16)
    targets = ["conv2:1@max", Unit("conv1", 5, (3, 3)), 4]
    together = saliency.explain_classes(net, x, ("vanilla", "guided"), targets)
    for target, result in zip(targets, together):
        alone = saliency.explain(net, x, ("vanilla", "guided"), target)
        for method in ("vanilla", "guided"):
            torch.testing.assert_close(result[method], alone[method])
    assert together[2].unit is None and together[2].targets.tolist() == [4, 4]


def test_smoothgrad_and_integrated_gradients_follow_the_unit():
    torch.manual_seed(0)
    net = SmallNet().eval()
    x = torch.randn(2, 3, 16, 16)
    plain = saliency.explain(net, x, "vanilla", "conv2:1@max")
    noiseless = saliency.explain(net, x, "smoothgrad", "conv2:1@max", options={"noise": 0.0, "samples": 2})
    torch.testing.assert_close(noiseless["smoothgrad"], plain["vanilla"])
    ig = saliency.explain(net, x, "integrated_gradients", "conv2:1@max",
                          options={"steps": 64, "batch_size": 10, "baseline": 0.0})
    baseline = saliency.explain(net, torch.zeros_like(x), "vanilla", Unit("conv2", 1, (0, 0)))
    # completeness: the attribution sums to the unit's value at x minus its value at the baseline, at x's positions
    rows, cols = plain.unit_positions.T
    with torch.no_grad():
        a0 = net.conv2(F.max_pool2d(F.relu(net.conv1(torch.zeros_like(x))), 3, 2, 1))[:, 1]
    start = a0[torch.arange(2), rows, cols]
    torch.testing.assert_close(ig["integrated_gradients"].sum(dim=(1, 2, 3)), plain.unit_values - start,
                               rtol=2e-2, atol=2e-3)
    assert baseline.unit_values.shape == (2,)


def test_gradcam_of_a_unit_reads_an_earlier_layer_as_captum_does():
    torch.manual_seed(0)
    net = SmallNet().eval()
    x = torch.randn(2, 3, 16, 16)
    unit = Unit("conv2", 6, "max")
    result = saliency.explain(net, x, "gradcam", unit, options={"layer": "conv1"})
    index = saliency.explain(net, x, "vanilla", unit).unit_positions

    def forward(inputs):
        own = {}
        handle = net.conv2.register_forward_hook(lambda m, i, o: own.setdefault("a", o))
        net(inputs)
        handle.remove()
        return own["a"][torch.arange(len(inputs)), 6, index[:, 0], index[:, 1]][:, None]

    cam = LayerGradCam(forward, net.conv1).attribute(x, target=0, relu_attributions=True)
    expected = F.interpolate(cam, size=x.shape[2:], mode="bilinear", align_corners=False).expand_as(x)
    assert expected.abs().max() > 0 and result.layer == "conv1"
    torch.testing.assert_close(result["gradcam"], expected.detach(), rtol=1e-4, atol=1e-6)
    own_layer = saliency.explain(net, x, "gradcam", unit)
    assert own_layer.layer == "conv2"
    with pytest.raises(OptionError, match="does not depend on layer 'pool'"):  # the pool's last call is after conv2
        saliency.explain(net, x, "gradcam", unit, options={"layer": "pool"})


@pytest.mark.parametrize("text, message", [
    ("conv2", "is not a unit"),
    (":3", "is not a unit"),
    ("conv2:x", "the channel must be a whole number"),
    ("conv2:1@3", "after '@' give ROW,COL"),
    ("conv2:1@-1,2", "after '@' give ROW,COL"),
])
def test_unit_strings_that_name_no_unit(text, message):
    with pytest.raises(TargetError, match=message):
        Unit.parse(text)


class _FlatNet(SmallNet):
    """SmallNet with a module returning [B, C, H·W] before the linear layer."""

    def __init__(self):
        super().__init__()
        self.flat = nn.Flatten(2)

    def forward(self, x):
        x = self.down(self.act(self.conv1(x)))
        x = self.down(self.act(self.conv2(x)))
        return self.fc(self.flat(x).flatten(1))


@pytest.mark.parametrize("target, message", [
    ("conv3:1", r"no layer 'conv3'; did you mean 'conv2' or 'conv1'"),
    ("conv2:8", r"channel 8 is out of range: layer 'conv2' has 8 channels \(0\.\.7\)"),
    ("conv2:1@8,0", r"position \(8, 0\) is outside the 8×8 map of layer 'conv2' \(rows 0\.\.7, columns 0\.\.7\)"),
    ("fc:1@max", r"returns \[batch, channels\] = \[1, 5\], which has no positions; name the unit as 'fc:1'"),
    ("flat:1", r"layer 'flat' returns \[1, 8, 16\]; a unit needs a layer that returns"),
    ("fc:7", r"channel 7 is out of range"),
])
def test_a_unit_the_model_does_not_have_is_one_line(target, message):
    torch.manual_seed(0)
    net = _FlatNet().eval()
    with pytest.raises(TargetError, match=message) as raised:
        saliency.explain(net, torch.randn(1, 3, 16, 16), "vanilla", target)
    assert "\n" not in str(raised.value)


def test_units_print_as_they_parse():
    for text in ("features.28:12", "features.28:12@7,9", "features.28:12@max", "classifier.4:17"):
        assert str(Unit.parse(text)) == text
    assert Unit.parse(" layer1.0.conv1:3@ 1, 2 ") == Unit("layer1.0.conv1", 3, (1, 2))
    assert Unit("a", 1, [2, 3]).position == (2, 3)
    with pytest.raises(TargetError):
        Unit("a", -1)
