"""Grad-CAM, guided Grad-CAM, SmoothGrad and Integrated Gradients behind the same explain()."""

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
import torch.nn.functional as F
from captum.attr import GuidedBackprop, GuidedGradCam, IntegratedGradients, LayerGradCam, NoiseTunnel, Saliency

import saliency
from saliency.errors import OptionError
from saliency.models.demo import build as build_demo
from conftest import random_model
from nets import SmallNet

NEW = ("gradcam", "guided_gradcam", "smoothgrad", "integrated_gradients")
FAST = {"samples": 4, "steps": 8}


@pytest.fixture(scope="module")
def demo():
    torch.manual_seed(0)
    return build_demo().eval()


def _inputs(side: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("model_name", ["demo", "resnet18"])
def test_every_new_method_gives_a_finite_map_shaped_like_the_input(model_name, demo, resnet18):
    model = demo if model_name == "demo" else resnet18
    x = _inputs(64)
    result = saliency.explain(model, x, NEW, target=[1, 2], options=FAST)
    assert tuple(result) == NEW
    for method in NEW:
        assert result[method].shape == x.shape and torch.isfinite(result[method]).all(), method
        assert result[method].abs().sum() > 0, method
    assert (result["gradcam"] >= 0).all()
    assert result.layer is not None


def test_gradcam_equals_captum_layer_gradcam_on_the_auto_layer(resnet18):
    x = _inputs(64)
    target = torch.tensor([3, 5])
    result = saliency.explain(resnet18, x, "gradcam", target=target)
    assert result.layer == "layer4"
    cam = LayerGradCam(resnet18, resnet18.layer4).attribute(x, target=target, relu_attributions=True)
    expected = F.interpolate(cam, size=(64, 64), mode="bilinear", align_corners=False).detach()
    assert torch.allclose(result["gradcam"], expected.expand_as(x), rtol=1e-5, atol=1e-6 * expected.abs().max().item())


def test_gradcam_layer_option_picks_a_named_layer(resnet18):
    result = saliency.explain(resnet18, _inputs(64), "gradcam", options={"layer": "layer3"})
    assert result.layer == "layer3"


def test_guided_gradcam_is_our_guided_map_times_the_upsampled_cam(resnet18):
    x = _inputs(64)
    target = torch.tensor([3, 5])
    result = saliency.explain(resnet18, x, ("guided", "gradcam", "guided_gradcam"), target=target)
    assert torch.allclose(result["guided_gradcam"], result["guided"] * result["gradcam"])
    captum = GuidedGradCam(resnet18, resnet18.layer4).attribute(x, target=target, interpolate_mode="bilinear")
    guided = GuidedBackprop(resnet18).attribute(x, target=target)
    cam = F.interpolate(LayerGradCam(resnet18, resnet18.layer4).attribute(x, target=target, relu_attributions=True),
                        size=(64, 64), mode="bilinear", align_corners=False)
    expected = (guided * cam).detach()
    assert torch.allclose(result["guided_gradcam"], expected, rtol=1e-4, atol=1e-6 * expected.abs().max().item())
    assert captum.shape == x.shape


def test_guided_gradcam_covers_functional_relus_where_captum_does_not():
    torch.manual_seed(0)
    module_net, functional_net = SmallNet("nn.ReLU").eval(), SmallNet("F.relu").eval()
    functional_net.load_state_dict(module_net.state_dict())
    x = _inputs(16, batch=3)
    ours = {name: saliency.explain(net, x, "guided_gradcam", target=1)["guided_gradcam"]
            for name, net in (("module", module_net), ("functional", functional_net))}
    assert torch.allclose(ours["module"], ours["functional"])
    captum = GuidedGradCam(functional_net, functional_net.conv2).attribute(x, target=1).detach()
    assert not torch.allclose(captum, ours["functional"], atol=1e-6)


def test_smoothgrad_is_seeded_and_reduces_to_the_gradient_without_noise(demo):
    x = _inputs(64)
    a = saliency.explain(demo, x, "smoothgrad", options={"samples": 6, "seed": 1})["smoothgrad"]
    b = saliency.explain(demo, x, "smoothgrad", options={"samples": 6, "seed": 1})["smoothgrad"]
    c = saliency.explain(demo, x, "smoothgrad", options={"samples": 6, "seed": 2})["smoothgrad"]
    assert torch.equal(a, b) and not torch.allclose(a, c)
    plain = saliency.explain(demo, x, ("vanilla", "smoothgrad"), options={"samples": 3, "noise": 0})
    assert torch.allclose(plain["smoothgrad"], plain["vanilla"], rtol=1e-5, atol=1e-7)


def test_smoothgrad_agrees_with_captums_noise_tunnel_in_expectation():
    torch.manual_seed(0)
    net = SmallNet().eval()
    x = _inputs(16, batch=1)
    ours = saliency.explain(net, x, "smoothgrad", target=2, options={"samples": 400, "noise": 0.2})["smoothgrad"]
    sigma = 0.2 * (x.max() - x.min()).item()
    torch.manual_seed(0)
    theirs = NoiseTunnel(Saliency(net)).attribute(x, target=2, nt_type="smoothgrad", nt_samples=400,
                                                  nt_samples_batch_size=100, stdevs=sigma, abs=False).detach()
    cosine = F.cosine_similarity(ours.flatten(), theirs.flatten(), dim=0)
    single = saliency.explain(net, x, "vanilla", target=2)["vanilla"]
    assert cosine > 0.95
    assert cosine > F.cosine_similarity(single.flatten(), theirs.flatten(), dim=0)


def test_integrated_gradients_equals_captum_and_is_complete(resnet18):
    x = _inputs(32)
    target = torch.tensor([3, 5])
    result = saliency.explain(resnet18, x, "integrated_gradients", target=target,
                              options={"steps": 16, "baseline": -0.5, "batch_size": 8})
    expected = IntegratedGradients(resnet18).attribute(x, baselines=-0.5, target=target, n_steps=16).detach()
    assert torch.allclose(result["integrated_gradients"], expected, rtol=1e-4, atol=1e-6 * expected.abs().max().item())

    torch.manual_seed(0)
    net = SmallNet().double().eval()
    xd = x.double()[:, :, :16, :16]
    ig = saliency.explain(net, xd, "integrated_gradients", target=1, options={"steps": 128})["integrated_gradients"]
    gap = net(xd)[:, 1] - net(torch.zeros_like(xd))[:, 1]
    assert torch.allclose(ig.flatten(1).sum(1), gap.detach(), rtol=2e-2, atol=1e-3)


def test_progress_reports_each_batch_up_to_the_total(demo):
    heard = []
    saliency.explain(demo, _inputs(64), ("smoothgrad", "integrated_gradients"),
                     options={"samples": 5, "steps": 6, "batch_size": 4}, progress=lambda *a: heard.append(a))
    smooth = [h for h in heard if h[0] == "smoothgrad"]
    assert smooth[-1] == ("smoothgrad", 5, 5) and len(smooth) == 3  # 2 samples of a batch of 2 per pass
    assert [h for h in heard if h[0] == "integrated_gradients"][-1][1:] == (3, 3)


@pytest.mark.parametrize(("options", "message"), [
    ({"sample": 3}, "unknown option 'sample'"), ({"samples": "many"}, "must be a whole number"),
    ({"samples": 0}, "at least 1"), ({"noise": -1}, "non-negative")])
def test_bad_options_are_clear_errors(demo, options, message):
    with pytest.raises(OptionError, match=message):
        saliency.explain(demo, _inputs(64), "smoothgrad", options=options)


def test_gradcam_without_any_conv_feature_map_is_a_clear_error():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2))
    with pytest.raises(saliency.SaliencyError, match="feature map"):
        saliency.explain(model, torch.randn(1, 3, 2, 2), "gradcam")


def test_unknown_layer_and_quadrature_are_clear_errors(demo):
    with pytest.raises(OptionError, match="no layer 'nope'"):
        saliency.explain(demo, _inputs(64), "gradcam", options={"layer": "nope"})
    with pytest.raises(OptionError, match="quadrature"):
        saliency.explain(demo, _inputs(64), "integrated_gradients", options={"quadrature": "simpson"})


def test_new_methods_in_eight_threads_equal_serial(resnet18):
    jobs = [(combo, _inputs(32, seed=s)) for s in range(3)
            for combo in (("gradcam",), ("guided_gradcam", "vanilla"), ("smoothgrad",), ("gradcam", "deconvnet"))]
    run = lambda job: saliency.explain(resnet18, job[1], job[0], target=2, options={"samples": 3} if "smoothgrad" in job[0] else None)  # noqa: E731
    serial = [run(job) for job in jobs]
    with ThreadPoolExecutor(max_workers=8) as pool:
        threaded = list(pool.map(run, jobs))
    for (combo, _), s, t in zip(jobs, serial, threaded):
        for method in combo:
            assert torch.allclose(s[method], t[method], rtol=1e-5, atol=1e-7), method
    assert not torch.nn.modules.module._global_forward_hooks  # the capture hook is gone once idle


@pytest.mark.parametrize(("name", "layer"), [("vgg16", "features"), ("densenet121", "features"),
                                             ("mobilenet_v2", "features")])
def test_gradcam_picks_the_last_conv_block_of_torchvision_models(name, layer):
    model = random_model(name, num_classes=10)
    assert saliency.explain(model, _inputs(128, batch=1), "gradcam").layer == layer


def test_gradcam_on_the_demo_model_reads_its_feature_block(demo):
    assert saliency.explain(demo, _inputs(64), "gradcam").layer == "features"


def test_smoothgrad_noise_belongs_to_each_sample_not_to_its_batch(demo):
    """A sample's SmoothGrad map is the same alone, beside other samples, anywhere in the batch, and
    whatever ``batch_size`` splits the noisy copies: its noise is drawn from the seed and its own values."""
    x = _inputs(64, batch=3)
    options = {"samples": 5, "seed": 3}
    alone = [saliency.explain(demo, x[i:i + 1], "smoothgrad", options=options)["smoothgrad"][0] for i in range(3)]
    together = saliency.explain(demo, x, "smoothgrad", options=options)["smoothgrad"]
    reversed_ = saliency.explain(demo, x.flip(0), "smoothgrad", options={**options, "batch_size": 4})["smoothgrad"]
    for i in range(3):
        torch.testing.assert_close(together[i], alone[i], rtol=1e-5, atol=1e-9)
        torch.testing.assert_close(reversed_[2 - i], together[i], rtol=1e-5, atol=1e-9)
    other_seed = saliency.explain(demo, x, "smoothgrad", options={**options, "seed": 4})["smoothgrad"]
    assert not torch.allclose(other_seed, together, rtol=1e-3)
