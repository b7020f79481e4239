"""Run the chosen checks on one model: :func:`evaluate`."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from saliency.engine import explain
from saliency.errors import SaliencyError
from saliency.evaluation.checks import CHECKS, DEFAULT_IMAGES, resolve_checks
from saliency.evaluation.class_sensitivity import (MAX_OTHER_CLASSES, RANDOM_NETWORKS, RECOVERY_IMAGES, VGG_MIN_SIZE,
                                                   class_sensitivity_scores, image_recovery)
from saliency.evaluation.data import is_shapes_model, shapes_images
from saliency.evaluation.faithfulness import faithfulness_scores
from saliency.evaluation.localization import localization_scores
from saliency.evaluation.randomization import (MAX_BLOCKS, blocks, cascading_randomization,
                                               independent_randomization)
from saliency.methods import resolve_methods
from saliency.models import LoadedModel


@dataclass
class Evaluation:
    """What :func:`evaluate` found: one result object per check run, and why others were skipped."""

    model: str
    weights: str
    methods: list[str]
    n_images: int
    seed: int
    results: dict[str, dict[str, object]] = field(default_factory=dict)  # check -> part -> result object
    skipped: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    predictions: dict[str, float] = field(default_factory=dict)
    example_image: np.ndarray | None = field(default=None, repr=False)
    """The first image as the model saw it (uint8 ``[H, W, C]``), for figures; not in JSON."""

    def to_dict(self) -> dict:
        """Plain JSON-ready data: settings, every check's numbers, skipped checks with reasons."""
        return {
            "model": self.model, "weights": self.weights, "methods": self.methods, "n_images": self.n_images,
            "seed": self.seed, "images": "shapes images (saliency.models.shapes), held-out stream, "
                                         "resized for the model's input",
            "predictions": self.predictions,
            "checks": {name: {"title": CHECKS[name].title, "summary": CHECKS[name].summary,
                              "citation": CHECKS[name].citation,
                              **{part: result.to_dict() for part, result in parts.items()}}
                       for name, parts in self.results.items()},
            "skipped": self.skipped, "seconds": self.seconds,
        }


def evaluate(loaded: LoadedModel, methods: str | Sequence[str] = "all", checks: str | Sequence[str] = "all",
             n_images: int = DEFAULT_IMAGES, seed: int = 0, progress: bool = True) -> Evaluation:
    """Run ``checks`` for ``methods`` on ``n_images`` shapes images prepared for ``loaded``'s input.

    Localisation needs a model that classifies the shapes (the demo model): for other models it is
    skipped, with the reason in :attr:`Evaluation.skipped`. ``progress``: a tqdm bar on stderr.
    """
    names = [m.name for m in resolve_methods(methods)]
    chosen = resolve_checks(checks)
    if n_images < 1:
        raise SaliencyError(f"the number of images must be at least 1, got {n_images}")
    result = Evaluation(model=loaded.name, weights=loaded.weights, methods=names, n_images=n_images, seed=seed)
    if "localisation" in chosen and not is_shapes_model(loaded.labels):
        chosen.remove("localisation")
        result.skipped["localisation"] = (
            f"model '{loaded.name}' does not classify the shapes ({len(loaded.labels)} other classes), so its maps "
            "have no reason to point at the shape; the object masks exist only for the shapes data (demo model)")
    model = loaded.module
    data = shapes_images(loaded.preprocessing, n_images, seed)
    x = data.inputs.to(loaded.device)
    first = loaded.preprocessing.unnormalise(data.inputs[0]).permute(1, 2, 0).numpy()
    result.example_image = (first * 255).round().astype(np.uint8)
    recovery = x[:RECOVERY_IMAGES]
    random_networks = len(RANDOM_NETWORKS) - (min(x.shape[-2:]) < VGG_MIN_SIZE)
    steps = {
        "randomisation": lambda: 2 * len(blocks(model, x, MAX_BLOCKS)),
        "class-sensitivity": lambda: min(loaded.num_classes - 1, MAX_OTHER_CLASSES) + random_networks,
        "localisation": lambda: 0,
        "faithfulness": lambda: n_images,
    }
    bar = tqdm(total=1 + sum(steps[c]() for c in chosen), unit="step", file=sys.stderr, disable=not progress,
               desc="eval", leave=False)
    try:
        start = time.perf_counter()
        reference = explain(model, x, names)
        result.seconds["explain"] = time.perf_counter() - start
        result.predictions = {"mean_probability_of_explained_class":
                              float(reference.probabilities.gather(1, reference.targets[:, None]).mean())}
        if is_shapes_model(loaded.labels):
            result.predictions["accuracy"] = float((reference.targets.cpu().numpy() == data.labels).mean())
        bar.update(1)
        for check in chosen:
            bar.set_description(check)
            start = time.perf_counter()
            if check == "randomisation":
                result.results[check] = {
                    mode: run(model, x, names, seed=seed, reference=reference, on_step=bar.update)
                    for mode, run in (("cascading", cascading_randomization),
                                      ("independent", independent_randomization))}
            elif check == "class-sensitivity":
                result.results[check] = {
                    "class_sensitivity": class_sensitivity_scores(model, x, names, seed=seed, reference=reference,
                                                                  on_step=bar.update),
                    "image_recovery": image_recovery(recovery, names, seed=seed, on_step=bar.update)}
            elif check == "localisation":
                result.results[check] = {"scores": localization_scores(reference.maps, data.masks, seed=seed)}
            elif check == "faithfulness":
                result.results[check] = {"scores": faithfulness_scores(model, x, reference.maps, reference.targets,
                                                                       seed=seed, on_step=bar.update)}
            result.seconds[check] = time.perf_counter() - start
    finally:
        bar.close()
    return result
