"""Sanity checks and scores for saliency methods, usable from notebooks and by ``saliency eval``.

>>> from saliency.models import load_model
>>> from saliency.evaluation import evaluate, text_report
>>> print(text_report(evaluate(load_model("demo"), checks="localisation", n_images=8)))

Each check is also a function of its own (:func:`cascading_randomization`,
:func:`class_sensitivity`, :func:`image_recovery`, :func:`localization`, :func:`faithfulness`),
built on the metric functions (:func:`spearman`, :func:`ssim`, :func:`pointing_game`,
:func:`relevance_mass`, :func:`deletion_curve` ...). They work with every method in
:data:`saliency.METHODS`.
"""

from saliency.evaluation.class_sensitivity import (ClassSensitivity, ImageRecovery, class_sensitivity,
                                                   image_recovery, other_classes, random_conv_relu_pool,
                                                   random_vgg16)
from saliency.evaluation.data import EvalImages, shapes_images
from saliency.evaluation.faithfulness import (FaithfulnessScores, auc, blur, deletion_curve, faithfulness,
                                              insertion_curve, perturbation_curve, pixel_order)
from saliency.evaluation.localization import (LocalizationScores, centre_map, default_tolerance, localization,
                                              pointing_game, random_map, relevance_mass)
from saliency.evaluation.randomization import (Block, RandomizationCurve, blocks, cascading_randomization,
                                               independent_randomization, parameter_layers, randomize_)
from saliency.evaluation.report import markdown_report, results_json, tables, text_report, write_all
from saliency.evaluation.runner import CHECKS, Evaluation, UnknownCheckError, evaluate, resolve_checks
from saliency.evaluation.similarity import (METRICS, magnitude, map_similarity, normalise, pearson, signed,
                                            spearman, ssim)

__all__ = [
    "CHECKS", "METRICS", "Block", "ClassSensitivity", "EvalImages", "Evaluation", "FaithfulnessScores",
    "ImageRecovery", "LocalizationScores", "RandomizationCurve", "UnknownCheckError", "auc", "blocks", "blur",
    "cascading_randomization", "centre_map", "class_sensitivity", "default_tolerance", "deletion_curve", "evaluate",
    "faithfulness", "insertion_curve", "image_recovery", "independent_randomization", "localization", "magnitude",
    "map_similarity", "markdown_report", "normalise", "other_classes", "parameter_layers", "pearson",
    "perturbation_curve", "pixel_order", "pointing_game", "random_conv_relu_pool", "random_map",
    "random_vgg16", "randomize_", "relevance_mass", "resolve_checks", "results_json", "shapes_images",
    "signed", "spearman", "ssim", "tables", "text_report", "write_all",
]
