"""Saliency maps for PyTorch image classifiers.

>>> import saliency
>>> result = saliency.explain(model, images, methods=("vanilla", "guided"), target=None)
>>> result["guided"].shape == images.shape
True

The names below are imported on first use, so ``import saliency`` (and the ``saliency`` command's
``--help``) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

EXPORTS: dict[str, str] = {
    "Explanation": "saliency.engine",
    "explain": "saliency.engine",
    "explain_classes": "saliency.engine",
    "SaliencyError": "saliency.errors",
    "UnsupportedActivationWarning": "saliency.errors",
    "METHODS": "saliency.methods",
    "REGISTRY": "saliency.methods",
    "RULE_METHODS": "saliency.methods",
    "Unit": "saliency.units",
}
"""Public name → the module that defines it. A further export is one more line here."""

__all__ = [*EXPORTS, "__version__"]

if TYPE_CHECKING:
    from saliency.engine import Explanation, explain, explain_classes
    from saliency.errors import SaliencyError, UnsupportedActivationWarning
    from saliency.methods import METHODS, REGISTRY, RULE_METHODS
    from saliency.units import Unit


def __getattr__(name: str) -> Any:
    """Import the module that defines ``name`` when it is first asked for (PEP 562)."""
    module = EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'saliency' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(EXPORTS))
