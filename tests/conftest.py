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
