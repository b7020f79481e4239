"""The model registry: bundled demo, torchvision by name (cache, file, offline), import paths.

Nothing here touches the network: downloads are switched off and sockets refuse to connect.
"""

from __future__ import annotations

import json
import pickle
import socket
import textwrap

import pytest
import torch
import torchvision
from PIL import Image

import saliency
from saliency.errors import ModelOutputError, TargetError, UnknownModelError, WeightsError
from saliency.models import available_models, load_model
from saliency.models.demo import WEIGHTS_PATH, ShapesNet
from saliency.models.shapes import CLASSES
from saliency.models.train import TEST_SEED, evaluate
from saliency.models.zoo import weights_for

STATED = WEIGHTS_PATH.with_suffix(".json")


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No downloads, no sockets, and a private, empty torchvision cache."""
    monkeypatch.setenv("SALIENCY_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))

    def refuse(*args, **kwargs):
        raise AssertionError("the test tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def cache_file(name: str):
    path = weights_for(name).cache_path
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def same_parameters(module: torch.nn.Module, state: dict) -> bool:
    own = module.state_dict()
    return all(torch.equal(own[k], v) for k, v in state.items() if k in own)


# --- bundled demo ------------------------------------------------------------------------------

def test_demo_is_the_default_and_loads_its_committed_weights():
    model = load_model()
    assert model.name == "demo" and model.labels == CLASSES
    assert isinstance(model.module, ShapesNet) and not model.module.training
    assert str(WEIGHTS_PATH) in model.weights
    assert WEIGHTS_PATH.stat().st_size < 5 * 1024 * 1024
    state = torch.load(WEIGHTS_PATH, weights_only=True)
    assert same_parameters(model.module, state)


def test_demo_reaches_its_stated_accuracy_on_a_fresh_test_set():
    """The model card's figure is on 2000 test images; the first 500 of them are re-checked here."""
    stated = json.loads(STATED.read_text())
    assert stated["test_seed"] == TEST_SEED and stated["test_accuracy"] >= 0.95
    accuracy = evaluate(load_model("demo").module, count=stated["check_images"], seed=TEST_SEED)
    assert accuracy >= 0.95
    assert accuracy >= stated["check_accuracy"] - 2 / stated["check_images"]   # 2 images of slack


def test_demo_explains_through_the_engine():
    model = load_model("demo")
    x, _ = model.prepare_many([Image.open(f"examples/{name}.png") for name in ("star", "circle")])
    result = saliency.explain(model.module, x, methods=("vanilla", "guided"))
    assert result["guided"].shape == x.shape
    assert [model.labels[int(t)] for t in result.targets] == ["star", "circle"]


def test_demo_random_weights_and_a_weights_file(tmp_path):
    random_model = load_model("demo", weights="random")
    assert random_model.weights == "random initialisation"
    path = tmp_path / "demo-copy.pt"
    torch.save(random_model.module.state_dict(), path)
    assert same_parameters(load_model("demo", weights=path).module, random_model.module.state_dict())


# --- class lookup ------------------------------------------------------------------------------

def test_class_index_accepts_indices_digit_strings_and_labels():
    model = load_model("demo", weights="random")
    assert model.class_index(3) == model.class_index("3") == model.class_index(" Star ") == 3
    assert model.label(6) == "crescent"


@pytest.mark.parametrize("bad, words", [(8, "0..7"), ("-1", "0..7"), ("strr", "'star'"),
                                        ("zebra", "0..7"), (True, "index"), (2.0, "index")])
def test_class_index_errors_say_what_is_valid(bad, words):
    model = load_model("demo", weights="random")
    with pytest.raises(TargetError, match=words.replace(".", r"\.")):
        model.class_index(bad)


def test_imagenet_labels_are_case_and_underscore_insensitive_and_duplicates_are_named():
    model = load_model("resnet18", weights="random")
    assert model.class_index("Golden Retriever") == model.class_index("golden_retriever") == 207
    with pytest.raises(TargetError, match="several classes"):
        model.class_index("cardigan")


def test_top_predictions():
    model = load_model("demo", weights="random")
    top = model.top(torch.tensor([[0.0, 5.0, 1.0, 0, 0, 0, 0, 0]]), k=2)[0]
    assert [p.label for p in top] == ["square", "triangle"] and top[0].probability > top[1].probability


# --- the list ----------------------------------------------------------------------------------

def test_available_models_lists_demo_and_every_torchvision_classifier():
    entries = {e.name: e for e in available_models()}
    assert entries["demo"].kind == "bundled" and entries["demo"].available
    for name in torchvision.models.list_models(module=torchvision.models):
        assert entries[name].kind == "torchvision" and entries[name].num_classes == 1000
    assert not entries["resnet50"].available                      # empty cache in this test
    assert entries["resnet50"].weights_path.endswith("resnet50-11ad3fa6.pth")
    assert "ImageNet" in entries["resnet50"].description


def test_unknown_model_names_suggest_close_ones():
    with pytest.raises(UnknownModelError, match="resnet50"):
        load_model("resnt50")
    with pytest.raises(UnknownModelError, match="package.module:factory"):
        load_model("no-such-model")


# --- torchvision -------------------------------------------------------------------------------

def test_torchvision_from_the_cache_with_its_preprocessing_and_labels():
    reference = torchvision.models.squeezenet1_1(weights=None)
    torch.save(reference.state_dict(), cache_file("squeezenet1_1"))
    model = load_model("SqueezeNet1_1")
    assert model.name == "squeezenet1_1" and not model.module.training
    assert same_parameters(model.module, reference.state_dict())
    assert str(weights_for("squeezenet1_1").cache_path) in model.weights
    assert (model.preprocessing.resize, model.preprocessing.crop) == (256, 224)
    assert model.preprocessing.mean == pytest.approx((0.485, 0.456, 0.406))
    assert len(model.labels) == 1000 and model.labels[0] == "tench"
    assert {e.name: e for e in available_models()}["squeezenet1_1"].available
    assert load_model("squeezenet1_1", weights="IMAGENET1K_V1").weights == model.weights


def test_torchvision_preprocessing_follows_the_weights():
    inception = weights_for("inception_v3").preprocessing
    assert (inception.resize, inception.crop) == (342, 299)
    vit = weights_for("vit_b_16", "IMAGENET1K_SWAG_E2E_V1").preprocessing
    assert (vit.resize, vit.crop, vit.interpolation) == (384, 384, "bicubic")
    resnet50 = load_model("resnet50", weights="random")
    assert (resnet50.preprocessing.resize, resnet50.preprocessing.crop) == (232, 224)


def test_googlenet_cache_file_with_auxiliary_heads_loads_like_torchvision():
    reference = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=False)
    torch.save(reference.state_dict(), cache_file("googlenet"))
    model = load_model("googlenet")
    assert model.module.aux1 is None and model.module.transform_input
    assert model.module(torch.zeros(1, 3, 224, 224)).shape == (1, 1000)


def test_torchvision_from_a_file_also_wrapped_or_saved_from_data_parallel(tmp_path):
    reference = torchvision.models.resnet18(weights=None)
    plain, wrapped = tmp_path / "plain.pth", tmp_path / "wrapped.pth"
    torch.save(reference.state_dict(), plain)
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()}},
               wrapped)
    for path in (plain, str(wrapped)):
        model = load_model("resnet18", weights=path)
        assert same_parameters(model.module, reference.state_dict())
        assert str(path) in model.weights


def test_old_densenet_key_names_are_renamed(tmp_path):
    reference = torchvision.models.densenet121(weights=None)
    old = {k.replace("norm1.", "norm.1.").replace("conv2.", "conv.2."): v      # before PyTorch 0.4
           for k, v in reference.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert old.keys() != reference.state_dict().keys()
    torch.save(old, tmp_path / "densenet.pth")
    model = load_model("densenet121", weights=tmp_path / "densenet.pth")
    assert same_parameters(model.module, reference.state_dict())


def test_fine_tuned_file_needs_its_labels(tmp_path):
    reference = torchvision.models.resnet18(weights=None, num_classes=3)
    torch.save(reference.state_dict(), tmp_path / "three.pth")
    with pytest.raises(WeightsError, match=r"fc\.weight.*labels"):
        load_model("resnet18", weights=tmp_path / "three.pth")
    (tmp_path / "labels.txt").write_text("cat\ndog\nbird\n")
    model = load_model("resnet18", weights=tmp_path / "three.pth", labels=tmp_path / "labels.txt")
    assert model.labels == ("cat", "dog", "bird") and model.class_index("DOG") == 1


def test_offline_with_nothing_cached_says_which_file_and_how():
    expected = weights_for("resnet50").cache_path
    with pytest.raises(WeightsError) as caught:
        load_model("resnet50")
    message = str(caught.value)
    assert str(expected) in message and "--weights FILE" in message and "not cached" in message


def test_download_false_wins_over_the_environment(monkeypatch):
    monkeypatch.delenv("SALIENCY_OFFLINE")
    with pytest.raises(WeightsError, match="downloads are off"):
        load_model("alexnet", download=False)


@pytest.mark.parametrize("content, words", [
    (b"", "is not a state dict saved by torch.save"),
    (b"not a torch file\n", "is not a state dict saved by torch.save"),
    (pickle.dumps({"a": 1}), "is not a state dict saved by torch.save"),   # a plain pickle
    (None, "not loaded for safety"),
])
def test_unreadable_or_unsafe_weights_files(tmp_path, content, words):
    path = tmp_path / "bad.pth"
    if content is None:
        torch.save(torch.nn.Linear(2, 2), path)          # a pickled module, not a state dict
    else:
        path.write_bytes(content)
    with pytest.raises(WeightsError, match=words) as caught:
        load_model("resnet18", weights=path)
    message = str(caught.value)
    assert "\n" not in message and "weights_only=False" not in message   # one line, never "turn safety off"
    with pytest.raises(WeightsError, match="does not exist"):
        load_model("resnet18", weights=tmp_path / "missing.pth")


def test_weights_for_another_architecture(tmp_path):
    torch.save(torchvision.models.squeezenet1_1(weights=None).state_dict(), tmp_path / "sq.pth")
    with pytest.raises(WeightsError, match="do not fit model 'resnet18'"):
        load_model("resnet18", weights=tmp_path / "sq.pth")
    with pytest.raises(WeightsError, match="IMAGENET1K_V1"):
        load_model("resnet18", weights="IMAGENET9K")
    with pytest.raises(WeightsError, match="feature extractor"):
        load_model("vgg16", weights="IMAGENET1K_FEATURES")


# --- your own model ----------------------------------------------------------------------------

CUSTOM_MODULE = """
import torch
from torch import nn

class Tiny(nn.Module):
    def __init__(self, num_classes=4):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.head = nn.Linear(6, num_classes)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))

def build():
    return Tiny(4)

def not_a_module():
    return "hello"

def broken():
    raise RuntimeError("boom")
"""


@pytest.fixture
def custom_package(tmp_path, monkeypatch):
    package = tmp_path / "custom_src" / "mynets"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "tiny.py").write_text(textwrap.dedent(CUSTOM_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path / "custom_src"))
    return tmp_path


def test_custom_model_by_import_path_with_weights_labels_and_preprocessing(custom_package):
    from mynets.tiny import Tiny

    reference = Tiny(4)
    torch.save(reference.state_dict(), custom_package / "tiny.pt")
    (custom_package / "labels.txt").write_text("apple\nbanana\ncherry\ndate\n")
    model = load_model("mynets.tiny:build", weights=custom_package / "tiny.pt",
                       labels=custom_package / "labels.txt", input_size=32, mean=0.5, std=0.25)
    assert model.name == "mynets.tiny:build" and model.labels == ("apple", "banana", "cherry", "date")
    assert (model.preprocessing.crop, model.preprocessing.resize) == (32, 32)
    assert model.preprocessing.mean == (0.5, 0.5, 0.5) and model.preprocessing.std == (0.25, 0.25, 0.25)
    assert same_parameters(model.module, reference.state_dict())
    prepared = model.prepare(Image.new("RGB", (64, 48), (200, 30, 30)))
    assert prepared.tensor.shape == (1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model.module(prepared.tensor), reference(prepared.tensor))
    result = saliency.explain(model.module, prepared.tensor, methods="guided", target=model.class_index("banana"))
    assert result["guided"].shape == prepared.tensor.shape


def test_custom_class_gets_num_classes_from_the_labels(custom_package):
    model = load_model("mynets.tiny:Tiny", labels=["a", "b", "c", "d", "e", "f", "g"])
    assert model.module.head.out_features == 7 and model.num_classes == 7


def test_custom_model_without_labels_gets_numbered_classes(custom_package):
    model = load_model("mynets.tiny:build", weights="random")
    assert model.labels == ("class 0", "class 1", "class 2", "class 3")
    assert model.preprocessing.crop == 224


@pytest.mark.parametrize("spec, error, words", [
    ("nowhere_pkg.mod:build", UnknownModelError, "cannot import"),
    ("mynets.tiny:missing", UnknownModelError, "no attribute"),
    ("mynets.tiny:not_a_module", UnknownModelError, "not a torch.nn.Module"),
    ("mynets.tiny:broken", UnknownModelError, "boom"),
])
def test_custom_model_errors(custom_package, spec, error, words):
    with pytest.raises(error, match=words):
        load_model(spec)


def test_custom_labels_must_match_the_outputs(custom_package):
    (custom_package / "two.txt").write_text("a\nb\n")
    with pytest.raises(ModelOutputError, match="2 classes.*4 scores"):
        load_model("mynets.tiny:build", labels=custom_package / "two.txt")
    with pytest.raises(WeightsError, match="does not exist"):
        load_model("mynets.tiny:build", labels=custom_package / "none.txt")
    (custom_package / "gap.txt").write_text("a\n\nc\nd\n")
    with pytest.raises(WeightsError, match="empty class name at index 1"):
        load_model("mynets.tiny:build", labels=custom_package / "gap.txt")
