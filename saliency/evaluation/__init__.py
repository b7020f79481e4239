"""Sanity checks and scores for saliency methods, usable from notebooks and by ``saliency eval``.

>>> from saliency.models import load_model
>>> from saliency.evaluation import evaluate, text_report
>>> print(text_report(evaluate(load_model("demo"), checks="localisation", n_images=8)))

Each check is also a function of its own (:func:`cascading_randomization`,
:func:`independent_randomization`, :func:`class_sensitivity_scores`, :func:`image_recovery`,
:func:`localization_scores`, :func:`faithfulness_scores`), built on metric functions
(:func:`spearman`, :func:`ssim`, :func:`pointing_game`, :func:`relevance_mass`,
:func:`deletion_curve` ...). They work with every method in :data:`saliency.METHODS`.
"""

import importlib
from typing import Any

_WHERE: dict[str, str] = {
    **dict.fromkeys(("METRICS", "magnitude", "map_similarity", "normalise", "pearson", "signed", "spearman",
                     "ssim"), "similarity"),
    **dict.fromkeys(("Block", "RandomizationCurve", "blocks", "cascading_randomization",
                     "independent_randomization", "parameter_layers", "randomize_"), "randomization"),
    **dict.fromkeys(("ClassSensitivity", "ImageRecovery", "class_sensitivity_scores", "image_recovery", "other_classes",
                     "random_conv_relu_pool", "random_vgg16"), "class_sensitivity"),
    **dict.fromkeys(("LocalizationScores", "centre_map", "default_tolerance", "localization_scores", "pointing_game",
                     "random_map", "relevance_mass"), "localization"),
    **dict.fromkeys(("FaithfulnessScores", "auc", "blur", "deletion_curve", "faithfulness_scores", "insertion_curve",
                     "perturbation_curve", "pixel_order"), "faithfulness"),
    **dict.fromkeys(("EvalImages", "shapes_images"), "data"),
    **dict.fromkeys(("CHECKS", "Check", "UnknownCheckError", "resolve_checks"), "checks"),
    **dict.fromkeys(("Evaluation", "evaluate"), "runner"),
    **dict.fromkeys(("markdown_report", "results_json", "tables", "text_report", "write_all"), "report"),
}
"""Public name -> the submodule defining it; imported on first use, so ``saliency eval --help`` and
``saliency`` itself start without loading matplotlib and torchvision."""

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'saliency.evaluation' has no attribute {name!r}")
    return getattr(importlib.import_module(f"saliency.evaluation.{_WHERE[name]}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
