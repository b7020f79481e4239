"""The table of checks ``saliency eval`` can run (light: no model code is imported here)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from saliency.errors import SaliencyError


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
