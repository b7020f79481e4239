"""Shared fixtures: random-init models (nothing is downloaded)."""

import pytest
import torch
import torchvision


def random_model(name: str, **kwargs) -> torch.nn.Module:
    """A torchvision classifier with seeded random weights, in eval mode."""
    torch.manual_seed(0)
    return torchvision.models.get_model(name, weights=None, **kwargs).eval()


@pytest.fixture(scope="session")
def resnet18() -> torch.nn.Module:
    return random_model("resnet18", num_classes=10)


@pytest.fixture(scope="session")
def vgg16() -> torch.nn.Module:
    return random_model("vgg16", num_classes=10)


@pytest.fixture
def one_torch_thread():
    """The demo model is tiny: one thread is fastest, and far faster on a busy shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def app():
    """The service with the bundled demo model, one per test module (a module may define its own)."""
    from saliency.api import create_app

    return create_app({"TESTING": True, "model": "demo"})


@pytest.fixture()
def client(app):
    return app.test_client()
