"""Saliency maps for PyTorch image classifiers.

>>> import saliency
>>> result = saliency.explain(model, images, methods=("vanilla", "guided"), target=None)
>>> result["guided"].shape == images.shape
True
"""

from saliency.engine import Explanation, explain
from saliency.errors import SaliencyError, UnsupportedActivationWarning
from saliency.methods import METHODS, REGISTRY

__version__ = "0.1.0"
__all__ = ["METHODS", "REGISTRY", "Explanation", "SaliencyError", "UnsupportedActivationWarning",
           "explain", "__version__"]
