"""The one place that knows every model: its name, how to build it, its preprocessing and labels.

``load_model(name)`` understands three kinds of name:

* a bundled model (:data:`BUNDLED`; ``"demo"`` — works offline, the default);
* a torchvision classifier (``"resnet50"``, ``"vgg16"``, ... — see :mod:`saliency.models.zoo`);
* an import path ``"package.module:factory"`` for your own ``nn.Module`` (:mod:`saliency.models.custom`).
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch
from PIL import Image
from torch import Tensor, nn

from saliency.errors import ModelOutputError, SaliencyError, TargetError, UnknownModelError, WeightsError
from saliency.models import custom, demo, zoo
from saliency.models.shapes import CLASSES
from saliency.models.weights import RANDOM, RANDOM_SEED, apply_state_dict, random_phrase, read_state_dict, seeded
from saliency.preprocess import Prepared, Preprocessing

DEFAULT_MODEL = "demo"


@dataclass(frozen=True)
class Bundled:
    """A model shipped with the package: architecture, committed weights, preprocessing, labels."""

    build: Callable[[int], nn.Module]
    weights: str
    preprocessing: Preprocessing
    labels: tuple[str, ...]
    description: str


BUNDLED: dict[str, Bundled] = {
    "demo": Bundled(
        build=demo.build, weights=str(demo.WEIGHTS_PATH), preprocessing=demo.PREPROCESSING,
        labels=CLASSES,
        description="bundled VGG-style CNN for the procedural shapes data (8 classes, 64×64, offline)"),
}


@dataclass(frozen=True)
class ModelEntry:
    """One row of :func:`available_models`."""

    name: str
    description: str
    kind: str                       # "bundled" or "torchvision"
    input_size: int                 # side of the square model input
    num_classes: int
    weights_path: str               # where the weights file is (or would be cached)
    available: bool                 # whether the weights are on this machine (works offline)


@dataclass(frozen=True)
class Prediction:
    """One class score: index, label and softmax probability."""

    index: int
    label: str
    probability: float


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A classifier ready to explain: the module (eval mode), its labels and its preprocessing.

    ``weights`` says where the parameters came from (a file, or random initialisation);
    ``weights_file`` is the absolute path of the state-dict file they were read from (``""`` when
    none was). The module may be shared between threads: :func:`saliency.explain` leaves it untouched.
    """

    name: str
    module: nn.Module
    labels: tuple[str, ...]
    preprocessing: Preprocessing
    description: str = ""
    weights: str = ""
    weights_file: str = ""
    _lookup: dict[str, list[int]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for index, label in enumerate(self.labels):
            self._lookup.setdefault(_normalise(label), []).append(index)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def device(self) -> torch.device:
        param = next(self.module.parameters(), None)
        return param.device if param is not None else torch.device("cpu")

    def prepare(self, image: Image.Image) -> Prepared:
        """The model input for one upright picture (see :meth:`Preprocessing.prepare`)."""
        return self.preprocessing.prepare(image)

    def prepare_many(self, images: Sequence[Image.Image]) -> tuple[Tensor, list[Prepared]]:
        """A batch ``[B, C, H, W]`` for several pictures, and each one's :class:`Prepared`."""
        return self.preprocessing.prepare_many(images)

    def label(self, index: int) -> str:
        """The name of class ``index``."""
        return self.labels[self.class_index(index)]

    def class_index(self, label_or_index: int | str) -> int:
        """A class index from an index (``int`` or digit string) or a label (case-insensitive).

        Raises :class:`~saliency.errors.TargetError` naming the valid range or the closest labels.
        """
        last = len(self.labels) - 1
        if isinstance(label_or_index, bool) or not isinstance(label_or_index, (int, str)):
            raise TargetError(f"a class must be an index 0..{last} or a label, got "
                              f"{type(label_or_index).__name__}")
        if isinstance(label_or_index, str) and re.fullmatch(r"\s*[+-]?\d+\s*", label_or_index):
            digits = label_or_index.strip()
            if len(digits.lstrip("+-").lstrip("0")) > 18:  # beyond any class count, and beyond int()'s limit
                raise TargetError(f"class index {digits[:12]}... ({len(digits)} characters) is out of range: "
                                  f"model '{self.name}' has classes 0..{last}")
            label_or_index = int(digits)
        if isinstance(label_or_index, int):
            if not 0 <= label_or_index <= last:
                raise TargetError(f"class index {label_or_index} is out of range: model '{self.name}' "
                                  f"has classes 0..{last}")
            return label_or_index
        found = self._lookup.get(_normalise(label_or_index), [])
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise TargetError(f"'{label_or_index}' names several classes of model '{self.name}' "
                              f"({', '.join(map(str, found))}); give the index instead")
        close = difflib.get_close_matches(_normalise(label_or_index), list(self._lookup), n=3, cutoff=0.6)
        suggestion = (f" Did you mean {' or '.join(repr(self.labels[self._lookup[c][0]]) for c in close)}?"
                      if close else "")
        raise TargetError(f"unknown class '{label_or_index}' for model '{self.name}'.{suggestion} "
                          f"Give a class index 0..{last} or one of the model's labels")

    def top(self, logits: Tensor, k: int = 5) -> list[list[Prediction]]:
        """The ``k`` most probable classes for each row of ``logits`` ``[B, classes]`` (or ``[classes]``)."""
        rows = logits.detach().float().reshape(-1, logits.shape[-1]).softmax(dim=1)
        values, indices = rows.topk(min(k, rows.shape[1]), dim=1)
        return [[Prediction(int(i), self.labels[int(i)] if int(i) < len(self.labels) else str(int(i)),
                            float(p)) for p, i in zip(vs, ix)] for vs, ix in zip(values, indices)]


def _normalise(label: str) -> str:
    return " ".join(re.sub(r"[_\-]+", " ", label.strip().lower()).split())


def available_models() -> list[ModelEntry]:
    """Every model that can be loaded by name: the bundled ones, then torchvision's classifiers."""
    entries = [ModelEntry(name=name, description=b.description, kind="bundled",
                          input_size=b.preprocessing.crop, num_classes=len(b.labels),
                          weights_path=b.weights, available=os.path.isfile(b.weights))
               for name, b in BUNDLED.items()]
    for name in zoo.names():
        chosen = zoo.weights_for(name)
        path = chosen.cache_path
        entries.append(ModelEntry(name=name, description=chosen.description, kind="torchvision",
                                  input_size=chosen.preprocessing.crop, num_classes=len(chosen.labels),
                                  weights_path=str(path), available=path.is_file()))
    return entries


def load_model(name: str = DEFAULT_MODEL, weights: str | os.PathLike | None = None, *,
               labels: str | os.PathLike | Sequence[str] | None = None, input_size: int | None = None,
               resize: int | None = None, mean: float | Sequence[float] | None = None,
               std: float | Sequence[float] | None = None, channels: int | None = None,
               download: bool | None = None, device: str | torch.device | None = None,
               seed: int = RANDOM_SEED) -> LoadedModel:
    """Load a classifier by name and return it with its labels and preprocessing.

    ``name``: ``"demo"`` (default), a torchvision architecture (``"resnet50"``) or an import path
    ``"package.module:factory"``. ``weights``: a state-dict file (loaded with ``weights_only=True``),
    ``"random"`` for random initialisation (drawn from ``seed``, without touching the caller's
    RNG: the same network in every process and run), a torchvision weights name, or ``None`` for
    the default (bundled file / torchvision cache or download). ``labels`` (a text file with one
    name per line, or a list), ``input_size``/``resize``/``mean``/``std``/``channels`` override the preprocessing
    and class names (needed for your own model; defaults: 224, ImageNet mean/std, RGB).
    ``download=False`` (or ``SALIENCY_OFFLINE=1``) never touches the network.
    """
    if not isinstance(name, str) or not name.strip():
        raise UnknownModelError("give a model name: 'demo', a torchvision name such as 'resnet50', or "
                                "package.module:factory")
    name = name.strip()
    label_names = custom.read_labels(labels) if labels is not None else None
    overrides = {"crop": input_size, "resize": resize, "mean": mean, "std": std, "channels": channels}
    if name in BUNDLED:
        loaded = _load_bundled(name, weights, label_names, seed)
    elif custom.is_spec(name):
        loaded = _load_custom(name, weights, label_names, overrides)
    elif zoo.is_name(name):
        module, chosen, source, file = zoo.load(name, weights, download=download,
                                                num_classes=len(label_names) if label_names else None, seed=seed)
        loaded = LoadedModel(name=name.lower(), module=module, labels=label_names or chosen.labels,
                             preprocessing=chosen.preprocessing, description=chosen.description,
                             weights=source, weights_file=file)
    else:
        raise UnknownModelError(_unknown(name))
    resized = _with_preprocessing(loaded, overrides)
    if device is not None:
        resized.module.to(device)
    if resized.preprocessing.crop != loaded.preprocessing.crop:
        _check_input_size(resized)
    return resized


def _check_input_size(loaded: LoadedModel) -> None:
    """One forward pass on a blank input of the new size: a model that cannot take it fails now, clearly."""
    module = loaded.module
    param = next(module.parameters(), None)
    blank = torch.zeros((1, *loaded.preprocessing.shape), device=loaded.device,
                        dtype=param.dtype if param is not None and param.is_floating_point() else torch.float32)
    training = module.training
    try:
        module.eval()
        with torch.no_grad():
            module(blank)
    except RuntimeError as exc:
        side = loaded.preprocessing.crop
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SaliencyError(f"model '{loaded.name}' cannot take {side} x {side} inputs ({reason}); "
                            "choose another input size") from None
    finally:
        module.train(training)


def _load_bundled(name: str, weights: str | os.PathLike | None, label_names: tuple[str, ...] | None,
                  seed: int = RANDOM_SEED) -> LoadedModel:
    entry = BUNDLED[name]
    labels = label_names or entry.labels
    path = entry.weights if weights is None else os.fspath(weights)
    if path.lower() == RANDOM:
        with seeded(seed):
            module = entry.build(len(labels))
        source, file = random_phrase(seed), ""
    else:
        module = entry.build(len(labels))
        if weights is None and not os.path.isfile(path):
            raise WeightsError(f"the bundled weights of '{name}' are missing at '{path}'; reinstall the "
                               "package or retrain them with: saliency train-demo")
        apply_state_dict(module, read_state_dict(path), source=f"file '{path}'", model=name)
        source, file = f"file '{path}'", os.path.abspath(path)
    return LoadedModel(name=name, module=module.eval(), labels=labels, preprocessing=entry.preprocessing,
                       description=entry.description, weights=source, weights_file=file)


def _load_custom(spec: str, weights: str | os.PathLike | None, label_names: tuple[str, ...] | None,
                 overrides: dict[str, object]) -> LoadedModel:
    module = custom.build(spec, num_classes=len(label_names) if label_names else None)
    source, file = "the factory's own parameters", ""
    if weights is not None and os.fspath(weights).lower() != RANDOM:
        apply_state_dict(module, read_state_dict(weights), source=f"file '{os.fspath(weights)}'", model=spec)
        source, file = f"file '{os.fspath(weights)}'", os.path.abspath(weights)
    module.eval()
    crop = int(overrides["crop"] or 224)
    preprocessing = Preprocessing(crop=crop, resize=max(crop, int(overrides["resize"] or crop)))
    preprocessing = _override(preprocessing, overrides)
    classes = _count_outputs(module, preprocessing, spec)
    if label_names is not None and len(label_names) != classes:
        raise ModelOutputError(f"the labels give {len(label_names)} classes but model '{spec}' returns "
                               f"{classes} scores; pass the labels file that goes with the model")
    labels = label_names or tuple(f"class {i}" for i in range(classes))
    return LoadedModel(name=spec, module=module, labels=labels, preprocessing=preprocessing,
                       description=f"custom model {spec}", weights=source, weights_file=file)


def _count_outputs(module: nn.Module, preprocessing: Preprocessing, spec: str) -> int:
    """Run one blank input through the model: it must return ``[1, classes]`` scores."""
    param = next(module.parameters(), None)
    blank = torch.zeros((1, *preprocessing.shape), dtype=param.dtype if param is not None else torch.float32,
                        device=param.device if param is not None else "cpu")
    try:
        with torch.no_grad():
            out = module(blank)
    except Exception as exc:  # noqa: BLE001 - the user's forward failed on the declared input size
        raise ModelOutputError(f"model '{spec}' failed on a {list(blank.shape)} input ({type(exc).__name__}: "
                               f"{exc}); check input_size and channels") from exc
    if not (isinstance(out, Tensor) and out.dim() == 2 and out.shape[0] == 1):
        shape = list(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ModelOutputError(f"model '{spec}' must return class scores shaped [batch, classes], got {shape}")
    return int(out.shape[1])


def _override(preprocessing: Preprocessing, overrides: dict[str, object]) -> Preprocessing:
    changes = {k: v for k, v in overrides.items() if v is not None}
    if "crop" in changes and "resize" not in changes and preprocessing.resize is not None:
        # keep the model's resize/crop ratio (e.g. 256/224) at the new size
        changes["resize"] = max(int(changes["crop"]), round(preprocessing.resize * int(changes["crop"])
                                                             / preprocessing.crop))
    if "channels" in changes:
        for key in ("mean", "std"):
            if key not in changes and len(getattr(preprocessing, key)) != changes["channels"]:
                changes[key] = sum(getattr(preprocessing, key)) / len(getattr(preprocessing, key))
    try:
        return replace(preprocessing, **changes) if changes else preprocessing
    except (TypeError, ValueError) as exc:
        raise SaliencyError(f"bad preprocessing setting: {exc}") from exc


def _with_preprocessing(loaded: LoadedModel, overrides: dict[str, object]) -> LoadedModel:
    preprocessing = _override(loaded.preprocessing, overrides)
    if preprocessing == loaded.preprocessing:
        return loaded
    return LoadedModel(name=loaded.name, module=loaded.module, labels=loaded.labels,
                       preprocessing=preprocessing, description=loaded.description, weights=loaded.weights,
                       weights_file=loaded.weights_file)


def _unknown(name: str) -> str:
    known = list(BUNDLED) + list(zoo.names())
    close = difflib.get_close_matches(name.lower(), known, n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    return (f"unknown model '{name}': {hint}use 'demo', a torchvision classifier (e.g. resnet50; list "
            "them with: saliency models), or your own as package.module:factory")
