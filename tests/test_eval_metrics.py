"""The evaluation metrics on hand-made inputs whose answers are known."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from saliency.evaluation import (auc, blur, centre_map, default_tolerance, deletion_curve, insertion_curve,
                                 localization_scores, magnitude, map_similarity, pearson, perturbation_curve,
                                 pixel_order, pointing_game, relevance_mass, resolve_checks, signed, spearman,
                                 ssim)
from saliency.evaluation.checks import CHECKS, UnknownCheckError
from saliency.errors import SaliencyError


def noise(*shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape)


# --- similarity ---------------------------------------------------------------------------------

def test_identical_maps_correlate_perfectly():
    a = noise(3, 16, 16)
    assert spearman(a, a) == pytest.approx(1.0)
    assert pearson(a, a) == pytest.approx(1.0)
    assert map_similarity(a, a) == pytest.approx({"spearman_abs": 1.0, "spearman_signed": 1.0, "ssim": 1.0})


def test_reversed_and_unrelated_maps():
    a = noise(16, 16)
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert pearson(a, 3 * a + 1) == pytest.approx(1.0)
    assert abs(spearman(a, noise(16, 16, seed=1))) < 0.2
    assert np.isnan(spearman(a, np.zeros_like(a)))   # undefined for a constant map


def test_rank_correlation_ignores_monotone_rescaling_but_pearson_does_not():
    a = np.abs(noise(20, 20))
    assert spearman(a, a ** 3) == pytest.approx(1.0)
    assert pearson(a, a ** 3) < 0.99


def test_ssim_of_identical_images_is_one_and_falls_with_noise():
    rng = np.random.default_rng(0)
    image = np.clip(centre_map(32, 32) + 0.1 * rng.normal(size=(32, 32)), 0, 1)
    assert ssim(image, image) == pytest.approx(1.0)
    assert ssim(np.ones((8, 8)), np.ones((8, 8))) == pytest.approx(1.0)
    noisy = np.clip(image + 0.3 * rng.normal(size=image.shape), 0, 1)
    unrelated = rng.uniform(size=image.shape)
    assert 1.0 > ssim(image, noisy, data_range=1.0) > ssim(image, unrelated, data_range=1.0)
    assert ssim(image, unrelated, data_range=1.0) < 0.2
    assert ssim(image, noisy) == pytest.approx(ssim(noisy, image))
    with pytest.raises(ValueError):
        ssim(image, image[:16])


def test_magnitude_and_signed_reduce_channels():
    a = np.zeros((3, 2, 2))
    a[0, 0, 0], a[1, 0, 0], a[2, 1, 1] = 2.0, -3.0, -1.0
    assert magnitude(torch.from_numpy(a)).tolist() == [[3.0, 0.0], [0.0, 1.0]]
    assert signed(a).tolist() == [[-1.0, 0.0], [0.0, -1.0]]


# --- localisation -------------------------------------------------------------------------------

def square_mask(size=32, top=4, left=4, side=8):
    mask = np.zeros((size, size), bool)
    mask[top:top + side, left:left + side] = True
    return mask


def peak_at(y, x, size=32):
    s = np.zeros((size, size))
    s[y, x] = 1.0
    return s


def test_pointing_game_hit_miss_and_tolerance():
    mask = square_mask()                               # rows/cols 4..11
    assert pointing_game(peak_at(6, 6), mask)
    assert not pointing_game(peak_at(25, 25), mask)
    assert not pointing_game(peak_at(15, 6), mask, tolerance=3)   # 4 px below the object
    assert pointing_game(peak_at(15, 6), mask, tolerance=4)
    assert not pointing_game(peak_at(6, 6), np.zeros((32, 32), bool))


def test_relevance_mass():
    mask = square_mask()
    assert relevance_mass(mask.astype(float), mask) == pytest.approx(1.0)
    assert relevance_mass(np.ones((32, 32)), mask) == pytest.approx(mask.mean())
    assert relevance_mass(1.0 - mask, mask) == 0.0
    assert np.isnan(relevance_mass(np.zeros((32, 32)), mask))
    with pytest.raises(ValueError):
        relevance_mass(-np.ones((32, 32)), mask)


def test_localization_scores_methods_and_baselines():
    masks = np.stack([square_mask(top=2, left=2), square_mask(top=20, left=20)])
    perfect = torch.from_numpy(masks[:, None].astype(np.float32)).expand(2, 3, 32, 32)
    scores = localization_scores({"perfect": perfect, "inverted": 1 - perfect}, masks, tolerance=0)
    assert scores.pointing["perfect"] == 1.0 and scores.mass["perfect"] == pytest.approx(1.0)
    assert scores.pointing["inverted"] == 0.0 and scores.mass["inverted"] == 0.0
    assert scores.pointing["centre"] == 0.0                        # neither square covers the centre
    assert scores.mass["random"] == pytest.approx(masks.mean(), abs=0.03)
    assert json.dumps(scores.to_dict())


def test_centre_map_and_tolerance_scaling():
    c = centre_map(9, 9)
    assert np.unravel_index(np.argmax(c), c.shape) == (4, 4)
    assert default_tolerance(224) == 15 and default_tolerance(64) == 4 and default_tolerance(8) == 1


# --- faithfulness -------------------------------------------------------------------------------

def linear_model(weights: torch.Tensor) -> nn.Module:
    """Two logits: (w · x) and 0, so the probability of class 0 is sigmoid(w · x)."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(weights.numel(), 2, bias=False))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].weight[0] = weights.flatten()
    return model.eval()


def test_perfect_order_beats_random_order_on_deletion_and_insertion():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 12, 12, generator=g)
    w = torch.zeros(1, 12, 12)
    w[0, 2:6, 3:9] = 0.5 + torch.rand(4, 6, generator=g)          # evidence lives in one patch
    model = linear_model(w)
    contribution = (w * x)[0]                                     # exact share of each pixel in the logit
    perfect = deletion_curve(model, x, contribution, target=0, steps=16)
    backwards = deletion_curve(model, x, -contribution, target=0, steps=16)
    rng = np.random.default_rng(0)
    random = np.mean([perturbation_curve(model, x, rng.permutation(144), 0, "deletion", 16) for _ in range(5)], 0)
    assert auc(perfect) < auc(random) < auc(backwards)
    inserted = insertion_curve(model, x, contribution, target=0, steps=16)
    random_in = np.mean([perturbation_curve(model, x, rng.permutation(144), 0, "insertion", 16) for _ in range(5)], 0)
    assert auc(inserted) > auc(random_in)


def test_curve_endpoints_and_batching():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    x = torch.randn(3, 10, 10)
    order = pixel_order(torch.rand(10, 10))
    with torch.no_grad():
        p = lambda t: model(t[None]).softmax(1)[0, 1].item()  # noqa: E731
        full, empty, blurred = p(x), p(torch.zeros_like(x)), p(blur(x))
    d = perturbation_curve(model, x, order, 1, "deletion", steps=10, batch_size=3)
    i = perturbation_curve(model, x, order, 1, "insertion", steps=10, batch_size=64)
    assert len(d) == 11 and d[0] == pytest.approx(full, abs=1e-6) and d[-1] == pytest.approx(empty, abs=1e-6)
    assert i[0] == pytest.approx(blurred, abs=1e-6) and i[-1] == pytest.approx(full, abs=1e-6)
    with pytest.raises(ValueError):
        perturbation_curve(model, x, order, 1, "scramble")


def test_auc_pixel_order_and_blur():
    assert auc(np.full(9, 0.3)) == pytest.approx(0.3)
    assert auc(np.linspace(0, 1, 11)) == pytest.approx(0.5)
    assert pixel_order(np.array([[0.1, 0.9], [0.5, 0.2]])).tolist() == [1, 2, 3, 0]
    constant = torch.full((3, 9, 9), 0.7)
    assert torch.allclose(blur(constant), constant)
    spot = torch.zeros(1, 15, 15)
    spot[0, 7, 7] = 1.0
    assert blur(spot)[0, 7, 7] < 0.1 and blur(spot).sum() == pytest.approx(1.0, abs=1e-5)


# --- check names --------------------------------------------------------------------------------

def test_resolve_checks():
    assert resolve_checks("all") == list(CHECKS)
    assert resolve_checks(["faithfulness", "randomization"]) == ["randomisation", "faithfulness"]
    assert resolve_checks("Localization") == ["localisation"]
    with pytest.raises(UnknownCheckError, match="choose from") as info:
        resolve_checks(["pointing"])
    assert isinstance(info.value, SaliencyError)
    with pytest.raises(UnknownCheckError):
        resolve_checks([])


def test_every_public_name_is_the_function_not_a_submodule():
    import importlib
    import types

    import saliency.evaluation as evaluation

    for module in set(evaluation._WHERE.values()):
        importlib.import_module(f"saliency.evaluation.{module}")   # loading a submodule must not shadow a name
    for name in evaluation.__all__:
        assert not isinstance(getattr(evaluation, name), types.ModuleType), name


def test_report_writes_undefined_scores_as_null_and_dash():
    from saliency.evaluation import Evaluation, LocalizationScores, results_json, text_report

    scores = LocalizationScores(pointing={"flat": 0.0, "centre": 0.5, "random": 0.5},
                                mass={"flat": float("nan"), "centre": 0.2, "random": 0.1},
                                tolerance=2, n=2, mask_fraction=0.1)
    evaluation = Evaluation(model="m", weights="w", methods=["flat"], n_images=2, seed=0,
                            results={"localisation": {"scores": scores}}, skipped={"faithfulness": "why"})
    data = json.loads(results_json(evaluation))
    assert data["checks"]["localisation"]["scores"]["relevance_mass"]["flat"] is None
    text = text_report(evaluation)
    assert "flat" in text and " -" in text and "skipped faithfulness: why" in text
