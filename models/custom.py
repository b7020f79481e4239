"""Your own classifier: ``"package.module:factory"`` plus a weights file, a labels file and preprocessing.

``factory`` is any callable (a function or an ``nn.Module`` class) found by importing
``package.module`` — it must be importable (installed, or on ``PYTHONPATH``). It is called without
arguments, or with ``num_classes=len(labels)`` when it accepts that parameter and labels are given.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from torch import nn

from saliency.errors import SaliencyError, UnknownModelError, WeightsError

_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def is_spec(name: str) -> bool:
    """Whether ``name`` looks like ``package.module:factory``."""
    return bool(_SPEC.match(name))


def resolve_factory(spec: str) -> Callable[..., object]:
    """The callable named by ``package.module:factory`` (``factory`` may be dotted: ``Class.create``)."""
    if not is_spec(spec):
        raise UnknownModelError(f"'{spec}' is not an import path; write it as package.module:factory")
    module_name, attribute = spec.split(":", 1)
    try:
        target: object = importlib.import_module(module_name)
    except ImportError as exc:
        raise UnknownModelError(f"cannot import '{module_name}' for model '{spec}' ({exc}); install the "
                                "package or add its folder to PYTHONPATH") from exc
    except Exception as exc:  # noqa: BLE001 - the user's module failed while importing
        raise UnknownModelError(f"importing '{module_name}' for model '{spec}' failed: "
                                f"{type(exc).__name__}: {exc}") from exc
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise UnknownModelError(f"'{module_name}' has no attribute '{attribute}' (model '{spec}')")
        target = getattr(target, part)
    if not callable(target):
        raise UnknownModelError(f"'{spec}' is not callable; point it at a function or nn.Module class")
    return target


def build(spec: str, num_classes: int | None = None) -> nn.Module:
    """Call the factory named by ``spec`` and check that it returns an ``nn.Module``."""
    factory = resolve_factory(spec)
    kwargs = {"num_classes": num_classes} if num_classes is not None and _accepts(factory, "num_classes") else {}
    try:
        module = factory(**kwargs)
    except SaliencyError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's factory failed
        raise UnknownModelError(f"calling '{spec}' failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(module, nn.Module):
        raise UnknownModelError(f"'{spec}' returned {type(module).__name__}, not a torch.nn.Module")
    return module


def _accepts(factory: Callable[..., object], parameter: str) -> bool:
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return False
    return parameter in signature.parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())


def read_labels(labels: str | os.PathLike | Sequence[str]) -> tuple[str, ...]:
    """Class names from a text file (one per line, in class-index order), a JSON list, or a sequence."""
    if isinstance(labels, (str, os.PathLike)):
        path = Path(labels)
        if not path.is_file():
            raise WeightsError(f"labels file '{path}' does not exist; give a text file with one class "
                               "name per line, in class-index order")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise WeightsError(f"cannot read labels file '{path}' as UTF-8 text ({exc})") from exc
        if path.suffix.lower() == ".json":
            try:
                items = json.loads(text)
            except json.JSONDecodeError as exc:
                raise WeightsError(f"labels file '{path}' is not valid JSON ({exc})") from exc
            if not (isinstance(items, list) and all(isinstance(i, str) for i in items)):
                raise WeightsError(f"labels file '{path}' must hold a JSON list of strings")
            names = [i.strip() for i in items]
        else:
            names = [line.strip() for line in text.splitlines()]
            while names and not names[-1]:
                names.pop()
        where = f"labels file '{path}'"
    else:
        names = [str(item).strip() for item in labels]
        where = "labels"
    if not names:
        raise WeightsError(f"{where} holds no class names")
    if not all(names):
        blank = names.index("")
        raise WeightsError(f"{where} has an empty class name at index {blank} (line {blank + 1})")
    return tuple(names)
