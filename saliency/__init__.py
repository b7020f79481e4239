"""Saliency maps for PyTorch image classifiers.

>>> import saliency
>>> result = saliency.explain(model, images, methods=("vanilla", "guided"), target=None)
>>> result["guided"].shape == images.shape
True
"""

from saliency.engine import Explanation, explain, explain_classes
from saliency.errors import SaliencyError, UnsupportedActivationWarning
from saliency.methods import METHODS, REGISTRY, RULE_METHODS

__version__ = "0.1.0"
__all__ = ["METHODS", "REGISTRY", "RULE_METHODS", "Explanation", "SaliencyError", "UnsupportedActivationWarning",
           "explain", "explain_classes", "__version__"]
