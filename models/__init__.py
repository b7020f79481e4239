"""Models to explain: the bundled demo classifier, torchvision classifiers by name, your own.

>>> from saliency.models import load_model
>>> model = load_model("demo")                 # offline, bundled weights
>>> model.labels[:3]
('circle', 'square', 'triangle')
"""

from saliency.models.registry import (BUNDLED, DEFAULT_MODEL, LoadedModel, ModelEntry, Prediction,
                                      available_models, load_model)

__all__ = ["BUNDLED", "DEFAULT_MODEL", "LoadedModel", "ModelEntry", "Prediction", "available_models",
           "load_model"]
