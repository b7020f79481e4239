"""The method registry: one table that the engine, CLI, API, web page and docs all read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from saliency import rules
from saliency.errors import UnknownMethodError
from saliency.intercept import ReluRule


@dataclass(frozen=True)
class Method:
    """A saliency method: the backward rule its ReLUs apply, and how to cite it."""

    name: str
    title: str
    relu_rule: ReluRule
    summary: str
    citation: str
    needs_relu: bool


REGISTRY: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            name="vanilla",
            title="Gradient",
            relu_rule=rules.vanilla,
            summary="Plain gradient of the class score with respect to the input: R = g · [x > 0] at each ReLU.",
            citation="Simonyan, Vedaldi & Zisserman (2013), Deep Inside Convolutional Networks, arXiv:1312.6034",
            needs_relu=False,
        ),
        Method(
            name="deconvnet",
            title="DeconvNet",
            relu_rule=rules.deconvnet,
            summary="ReLUs pass max(g, 0) whatever the forward sign; max-pools unpool with the forward switches.",
            citation="Zeiler & Fergus (2014), Visualizing and Understanding Convolutional Networks, ECCV",
            needs_relu=True,
        ),
        Method(
            name="guided",
            title="Guided backpropagation",
            relu_rule=rules.guided,
            summary="ReLUs pass max(g, 0) · [x > 0]: only where the forward input and the gradient are positive.",
            citation="Springenberg, Dosovitskiy, Brox & Riedmiller (2014), Striving for Simplicity, arXiv:1412.6806",
            needs_relu=True,
        ),
    )
}

METHODS: tuple[str, ...] = tuple(REGISTRY)


def resolve_methods(methods: str | Iterable[str]) -> list[Method]:
    """Registry entries for ``methods``: a name, ``"all"``, or a sequence of names (order kept, no repeats)."""
    names = [methods] if isinstance(methods, str) else list(methods)
    if "all" in names:
        names = list(METHODS)
    if not names:
        raise UnknownMethodError(f"no method given; choose from {', '.join(METHODS)} or 'all'")
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise UnknownMethodError(
            f"unknown method {', '.join(map(repr, unknown))}; choose from {', '.join(METHODS)} or 'all'")
    return [REGISTRY[n] for n in dict.fromkeys(names)]
