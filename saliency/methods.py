"""The method registry: one table that the engine, CLI, API, web page and docs all read."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from saliency import rules
from saliency.errors import OptionError, UnknownMethodError
from saliency.rules import ReluRule

if TYPE_CHECKING:  # the registry itself imports neither torch nor Captum: the CLI's help reads it
    from torch import Tensor

    from saliency.passes import ForwardPass
    from saliency.sampling import Progress

Attribute = Callable[["ForwardPass", Mapping[str, Any], "Progress"], "Tensor"]


@dataclass(frozen=True)
class Method:
    """A saliency method: how it attributes, the ReLU rule it needs in the shared pass, how to cite it.

    ``relu_rule``: the rule ReLUs apply in the input-gradient pass this method reads from the
    shared forward pass (``None``: it reads none). ``needs_layer``: it reads the gradient at a
    layer's output from that pass. ``options``: its tunable parameters and their defaults.
    ``delegates``: what of it Captum computes, if anything.
    """

    name: str
    title: str
    summary: str
    citation: str
    attribute: Attribute
    relu_rule: ReluRule | None = None
    needs_layer: bool = False
    options: Mapping[str, Any] = field(default_factory=dict)
    delegates: str = ""

    @property
    def needs_relu(self) -> bool:
        """Whether the method is undefined without ReLUs (its rule differs from the plain gradient)."""
        return self.relu_rule is not None and self.relu_rule is not rules.vanilla

    @property
    def shared_passes(self) -> frozenset[ReluRule | str]:
        """The backward passes through the shared forward pass it reads: its ReLU rule's, and ``"layer"``'s."""
        return frozenset(([self.relu_rule] if self.relu_rule is not None else []) + (["layer"] if self.needs_layer else []))


def _rule_method(rule: ReluRule) -> Attribute:
    return lambda run, options, progress: run.gradient(rule)


def _gradcam(run: ForwardPass, options: Mapping[str, Any], progress: Progress) -> Tensor:
    from saliency.cam import gradcam

    return gradcam(run).expand_as(run.leaf)


def _guided_gradcam(run: ForwardPass, options: Mapping[str, Any], progress: Progress) -> Tensor:
    from saliency.cam import gradcam

    return run.gradient(rules.guided) * gradcam(run)


def _smoothgrad(run: ForwardPass, options: Mapping[str, Any], progress: Progress) -> Tensor:
    from saliency.sampling import smoothgrad

    return smoothgrad(run, options["samples"], options["noise"], options["seed"], options["batch_size"], progress)


def _integrated_gradients(run: ForwardPass, options: Mapping[str, Any], progress: Progress) -> Tensor:
    from saliency.sampling import integrated_gradients

    return integrated_gradients(run, options["steps"], options["baseline"], options["quadrature"],
                                options["batch_size"], progress)


_LAYER = {"layer": "auto"}
REGISTRY: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            name="vanilla",
            title="Gradient",
            summary="Plain gradient of the class score with respect to the input: R = g · [x > 0] at each ReLU.",
            citation="Simonyan, Vedaldi & Zisserman (2013), Deep Inside Convolutional Networks, arXiv:1312.6034",
            attribute=_rule_method(rules.vanilla),
            relu_rule=rules.vanilla,
        ),
        Method(
            name="deconvnet",
            title="DeconvNet",
            summary="ReLUs pass max(g, 0) whatever the forward sign; max-pools unpool with the forward switches.",
            citation="Zeiler & Fergus (2014), Visualizing and Understanding Convolutional Networks, ECCV",
            attribute=_rule_method(rules.deconvnet),
            relu_rule=rules.deconvnet,
        ),
        Method(
            name="guided",
            title="Guided backpropagation",
            summary="ReLUs pass max(g, 0) · [x > 0]: only where the forward input and the gradient are positive.",
            citation="Springenberg, Dosovitskiy, Brox & Riedmiller (2014), Striving for Simplicity, arXiv:1412.6806",
            attribute=_rule_method(rules.guided),
            relu_rule=rules.guided,
        ),
        Method(
            name="gradcam",
            title="Grad-CAM",
            summary="ReLU of the last conv block's feature maps weighted by their mean gradient, upsampled "
                    "bilinearly to the input (one map for all channels).",
            citation="Selvaraju et al. (2017), Grad-CAM: Visual Explanations from Deep Networks, ICCV",
            attribute=_gradcam,
            needs_layer=True,
            options=_LAYER,
        ),
        Method(
            name="guided_gradcam",
            title="Guided Grad-CAM",
            summary="Guided backpropagation multiplied by the upsampled Grad-CAM map.",
            citation="Selvaraju et al. (2017), Grad-CAM: Visual Explanations from Deep Networks, ICCV",
            attribute=_guided_gradcam,
            relu_rule=rules.guided,
            needs_layer=True,
            options=_LAYER,
        ),
        Method(
            name="smoothgrad",
            title="SmoothGrad",
            summary="Gradient averaged over noisy copies of the input (noise σ = noise × the input's value range).",
            citation="Smilkov, Thorat, Kim, Viégas & Wattenberg (2017), SmoothGrad, arXiv:1706.03825",
            attribute=_smoothgrad,
            options={"samples": 25, "noise": 0.15, "seed": 0, "batch_size": 32},
        ),
        Method(
            name="integrated_gradients",
            title="Integrated Gradients",
            summary="(x − baseline) times the gradient integrated along the straight path from a constant baseline.",
            citation="Sundararajan, Taly & Yan (2017), Axiomatic Attribution for Deep Networks, ICML",
            attribute=_integrated_gradients,
            options={"steps": 32, "baseline": 0.0, "quadrature": "gausslegendre", "batch_size": 32},
            delegates="path integral, quadrature and batching: captum.attr.IntegratedGradients",
        ),
    )
}

METHODS: tuple[str, ...] = tuple(REGISTRY)
RULE_METHODS: tuple[str, ...] = ("vanilla", "deconvnet", "guided")


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


def resolve_options(chosen: list[Method], options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The chosen methods' option defaults overridden by ``options``, each coerced to its default's type."""
    merged: dict[str, Any] = {}
    for method in chosen:
        merged.update(method.options)
    for key, value in (options or {}).items():
        if key not in merged:
            valid = ", ".join(sorted(merged)) or "none"
            raise OptionError(f"unknown option {key!r} for {', '.join(m.name for m in chosen)}; valid: {valid}")
        merged[key] = _coerce(key, value, merged[key])
    return merged


def _coerce(key: str, value: Any, default: Any) -> Any:
    kind = type(default)
    try:
        coerced = int(str(value), 10) if kind is int else kind(value)
    except (TypeError, ValueError):
        kind_name = {int: "a whole number", float: "a number"}.get(kind, f"a {kind.__name__}")
        raise OptionError(f"option {key!r} must be {kind_name}, got {_shown(value)}") from None
    if key in ("samples", "steps", "batch_size") and coerced < 1 or key == "noise" and not coerced >= 0:
        raise OptionError(f"option {key!r} must be {'at least 1' if kind is int else 'non-negative'}, got {value!r}")
    if key == "seed" and not -2**63 <= coerced < 2**64:  # what torch.Generator.manual_seed accepts
        raise OptionError(f"option 'seed' must be from {-2**63} to {2**64 - 1}, got {_shown(value)}")
    return coerced


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:40]}... ({len(str(value))} characters)"
