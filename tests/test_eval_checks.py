"""The checks on small real networks: known answers where the network makes them known."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

import saliency
from saliency.evaluation import (blocks, cascading_randomization, class_sensitivity_scores, image_recovery,
                                 independent_randomization, other_classes, randomize_, shapes_images)
from saliency.evaluation.data import is_shapes_model
from saliency.models import load_model
from saliency.models.shapes import CLASSES, make_batch
from saliency.models.train import TEST_SEED


def linear_classifier(classes: int = 4, side: int = 8, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * side * side, classes)).eval()


class SmallConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2))
        self.body = nn.Sequential(nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2))
        self.head = nn.Linear(32, 5)

    def forward(self, x):
        return self.head(self.body(self.stem(x)).flatten(1))


@pytest.fixture(scope="module")
def demo():
    return load_model("demo", weights="random").module


def test_blocks_run_from_the_logits_down_and_merge_norms(demo, resnet18):
    x = torch.randn(1, 3, 64, 64)
    assert [b.name for b in blocks(demo, x)] == ["classifier", "features.9", "features.7", "features.6",
                                                 "features.4", "features.3", "features.1", "features.0"]
    found = blocks(resnet18, torch.randn(1, 3, 64, 64))
    assert [b.name for b in found] == ["fc", "layer4", "layer3", "layer2", "layer1", "conv1"]
    assert found[-1].modules == (resnet18.conv1, resnet18.bn1)
    net = SmallConvNet()
    assert [b.name for b in blocks(net, torch.randn(1, 3, 8, 8), max_blocks=8)] == ["head", "body", "stem"]
    assert [type(m) for m in blocks(net, torch.randn(1, 3, 8, 8))[-1].modules] == [nn.Conv2d, nn.BatchNorm2d]
    assert len(blocks(nn.Sequential(*[nn.Linear(4, 4) for _ in range(20)]), torch.randn(1, 4), max_blocks=5)) == 5


def test_randomize_is_seeded_and_changes_every_parameter():
    a, b = SmallConvNet(), SmallConvNet()
    b.load_state_dict(a.state_dict())
    before = copy.deepcopy(a.state_dict())
    block = blocks(a, torch.randn(1, 3, 8, 8))[-1]
    randomize_(block, seed=3)
    randomize_(blocks(b, torch.randn(1, 3, 8, 8))[-1], seed=3)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key])
    assert not torch.equal(a.stem[0].weight, before["stem.0.weight"])
    assert torch.equal(a.head.weight, before["head.weight"])   # other blocks untouched


def test_randomising_a_linear_model_replaces_its_gradient_and_leaves_the_caller_alone():
    model = linear_classifier(side=16)
    state = copy.deepcopy(model.state_dict())
    x = torch.randn(3, 3, 16, 16)
    for run in (cascading_randomization, independent_randomization):
        curve = run(model, x, ("vanilla",))
        assert curve.steps == ["1"]
        # the gradient of a linear model is its weight row: new weights, unrelated map
        assert abs(curve.mean["vanilla"]["spearman_signed"][0]) < 0.3
        assert curve.mean["vanilla"]["ssim"][0] < 0.3
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key])


def test_randomisation_curves_cover_every_registered_method(demo):
    x = torch.randn(1, 3, 64, 64)
    reference = saliency.explain(demo, x, "all")
    curve = cascading_randomization(demo, x, reference=reference, max_blocks=2)
    assert list(curve.mean) == list(saliency.METHODS)
    assert curve.steps == ["classifier", "features"]
    for method, metrics in curve.mean.items():
        assert set(metrics) == {"spearman_abs", "spearman_signed", "ssim"}
        assert all(len(v) == 2 for v in metrics.values())
        assert len(curve.example[method]) == 3
    assert abs(curve.baseline["spearman_abs"]) < 0.1


def test_class_sensitivity_known_answers():
    x = torch.randn(2, 3, 8, 8)
    # every class looks at the same pattern, with different positive strengths: same map for any class
    same = linear_classifier()
    with torch.no_grad():
        same[1].weight.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0])[:, None] * same[1].weight[0])
    result = class_sensitivity_scores(same, x, ("vanilla",))
    assert result.other_classes == 3
    assert result.scores["vanilla"]["spearman_abs"] == pytest.approx(1.0)
    # independent random weights per class: unrelated maps
    x = torch.randn(2, 3, 16, 16)
    result = class_sensitivity_scores(linear_classifier(side=16), x, ("vanilla",))
    assert abs(result.scores["vanilla"]["spearman_signed"]) < 0.3


def test_other_classes():
    top = torch.tensor([0, 3])
    assert other_classes(top, 4).tolist() == [[1, 2, 3], [0, 1, 2]]
    many = other_classes(top, 1000, count=5, seed=1)
    assert many.shape == (2, 5) and not (many == top[:, None]).any()
    assert torch.equal(many, other_classes(top, 1000, count=5, seed=1))


class Energy(nn.Module):
    """Scores ±|x|²/2: the gradient of class 0 is the input itself."""

    def forward(self, x):
        e = (x * x).flatten(1).sum(1) / 2
        return torch.stack([e, -e], dim=1)


def test_image_recovery_known_answer_and_default_networks():
    x = torch.randn(2, 3, 16, 16)
    result = image_recovery(x, ("vanilla",), networks={"energy": Energy()})
    assert result.scores["energy"]["vanilla"] == pytest.approx(1.0)
    assert abs(result.baseline["energy"]) < 0.1
    result = image_recovery(torch.randn(1, 3, 32, 32), ("vanilla", "guided"))
    assert set(result.scores) == {"vgg16", "conv-relu-pool"}
    assert set(image_recovery(torch.randn(1, 3, 16, 16), "vanilla").scores) == {"conv-relu-pool"}  # VGG needs 32
    assert all(-1.0 <= v <= 1.0 for scores in result.scores.values() for v in scores.values())


def test_shapes_images_masks_follow_the_preprocessing(demo):
    demo_model = load_model("demo", weights="random")
    data = shapes_images(demo_model.preprocessing, 3, seed=2)
    _, labels, masks = make_batch(3, seed=TEST_SEED + 2)
    assert data.inputs.shape == (3, 3, 64, 64)
    assert np.array_equal(data.masks, masks) and np.array_equal(data.labels, labels)
    assert is_shapes_model(demo_model.labels) and not is_shapes_model(CLASSES[:4])
    from saliency.models.zoo import weights_for

    big = shapes_images(weights_for("resnet18").preprocessing, 2, seed=2)
    assert big.inputs.shape == (2, 3, 224, 224) and big.masks.shape == (2, 224, 224)
    # resize 256 + centre crop 224 keeps the middle 56 × 56 of the 64-pixel picture
    small = torch.nn.functional.interpolate(torch.from_numpy(big.masks[:, None].astype(np.float32)), size=56)
    assert np.mean(small[:, 0].numpy() != masks[:2, 4:60, 4:60]) < 0.02


def test_measuring_leaves_a_training_model_as_it_was():
    from saliency.evaluation import faithfulness_scores

    net = SmallConvNet().train()
    state = copy.deepcopy(net.state_dict())
    x = torch.randn(2, 3, 8, 8)
    blocks(net, x)
    maps = {"vanilla": torch.rand(2, 3, 8, 8)}
    faithfulness_scores(net, x, maps, [0, 1], steps=4)
    assert net.training and net.stem[1].training
    for key, value in net.state_dict().items():
        assert torch.equal(value, state[key]), key     # batch-norm statistics untouched


def test_randomisation_counts_the_constant_maps_it_leaves_out_and_the_table_shows_them():
    from saliency.evaluation.report import UNDEFINED_NOTE, _randomisation_tables

    model = SmallConvNet().eval()
    with torch.no_grad():
        model.body[0].weight.zero_()
        model.body[0].bias.fill_(-1.0)  # the second ReLU is always off: every input gradient is zero
    x = torch.randn(3, 3, 8, 8)
    curve = cascading_randomization(model, x, "vanilla", max_blocks=2)
    assert curve.left_out == {"vanilla": [3, 3]}            # the trained model's maps are all zero
    assert all(np.isnan(v) for v in curve.mean["vanilla"]["spearman_abs"])
    table = _randomisation_tables({"cascading": curve})[0]
    assert table.header[-1] == "left out" and table.rows[0][-1] == "6/6"
    assert table.rows[0][1] == "-" and UNDEFINED_NOTE in table.text() and UNDEFINED_NOTE in table.markdown()
    assert curve.to_dict()["left_out"] == {"vanilla": [3, 3]}


def test_a_table_explains_undefined_cells_only_when_it_has_one():
    from saliency.evaluation.report import UNDEFINED_NOTE, Table

    assert UNDEFINED_NOTE not in Table("t", ["method", "score"], [["a", "0.50"], ["b", "-0.10"]]).text()
    assert UNDEFINED_NOTE in Table("t", ["method", "score"], [["a", "0.50"], ["b", "-"]]).markdown()
