"""Run the chosen checks on one model: the table of checks, and :func:`evaluate` that runs them."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from tqdm import tqdm

from saliency.engine import explain
from saliency.errors import SaliencyError
from saliency.evaluation.class_sensitivity import (MAX_OTHER_CLASSES, RANDOM_NETWORKS, RECOVERY_IMAGES,
                                                   class_sensitivity, image_recovery)
from saliency.evaluation.data import is_shapes_model, shapes_images
from saliency.evaluation.faithfulness import faithfulness
from saliency.evaluation.localization import localization
from saliency.evaluation.randomization import (MAX_BLOCKS, blocks, cascading_randomization,
                                               independent_randomization)
from saliency.methods import resolve_methods
from saliency.models import LoadedModel


@dataclass(frozen=True)
class Check:
    """One sanity check: its name on the command line, what it measures, whom it follows."""

    name: str
    title: str
    summary: str
    citation: str


CHECKS: dict[str, Check] = {c.name: c for c in (
    Check("randomisation", "Model-parameter randomisation",
          "similarity of each map to the trained model's map as the weights are re-initialised, from the "
          "logits down (cascading) and one block at a time (independent); high = the map ignores the weights",
          "Adebayo, Gilmer, Muelly, Goodfellow, Hardt & Kim (2018), Sanity Checks for Saliency Maps, NeurIPS"),
    Check("class-sensitivity", "Class sensitivity and image recovery",
          "similarity of the predicted class's map to other classes' maps (high = class-insensitive), and "
          "correlation of the map with the input on random networks (high = the map recovers the image)",
          "Nie, Zhang & Patel (2018), A Theoretical Explanation for Perplexing Behaviors of "
          "Backpropagation-based Visualizations, ICML"),
    Check("localisation", "Localisation",
          "pointing game (the map's maximum on the object, with a tolerance) and relevance mass inside the "
          "object mask, against a centre and a random map",
          "Zhang, Lin, Brandt, Shen & Sclaroff (2016), Top-down Neural Attention by Excitation Backprop, ECCV"),
    Check("faithfulness", "Faithfulness",
          "deletion and insertion curves: the class probability as pixels are removed / restored in the "
          "map's order; area under the curve, against a random order",
          "Petsiuk, Das & Saenko (2018), RISE: Randomized Input Sampling for Explanation of Black-box "
          "Models, BMVC"),
)}
"""Every check ``saliency eval`` can run, in the order it runs them."""

DEFAULT_IMAGES = 8
"""Images per check by default: one of each shapes class."""


class UnknownCheckError(SaliencyError, ValueError):
    """A check name not in :data:`CHECKS`."""


def resolve_checks(names: str | Iterable[str]) -> list[str]:
    """Check names from a name, ``"all"`` or several names (American spellings accepted), in table order."""
    given = [names] if isinstance(names, str) else list(names)
    wanted = [n.strip().lower().replace("randomization", "randomisation").replace("localization", "localisation")
              for n in given if n.strip()]
    if not wanted:
        raise UnknownCheckError(f"no check given; choose from {', '.join(CHECKS)} or 'all'")
    if "all" in wanted:
        return list(CHECKS)
    unknown = [n for n in wanted if n not in CHECKS]
    if unknown:
        raise UnknownCheckError(f"unknown check {', '.join(map(repr, unknown))}; choose from "
                                f"{', '.join(CHECKS)} or 'all'")
    return [c for c in CHECKS if c in wanted]


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
    recovery = x[:RECOVERY_IMAGES]
    steps = {
        "randomisation": lambda: 2 * len(blocks(model, x, MAX_BLOCKS)),
        "class-sensitivity": lambda: min(loaded.num_classes - 1, MAX_OTHER_CLASSES) + len(RANDOM_NETWORKS),
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
                    "class_sensitivity": class_sensitivity(model, x, names, seed=seed, reference=reference,
                                                           on_step=bar.update),
                    "image_recovery": image_recovery(recovery, names, seed=seed, on_step=bar.update)}
            elif check == "localisation":
                result.results[check] = {"scores": localization(reference.maps, data.masks, seed=seed)}
            elif check == "faithfulness":
                result.results[check] = {"scores": faithfulness(model, x, reference.maps, reference.targets,
                                                                seed=seed, on_step=bar.update)}
            result.seconds[check] = time.perf_counter() - start
    finally:
        bar.close()
    return result
