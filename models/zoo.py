"""torchvision ImageNet classifiers by name, with their own preprocessing and labels.

Weights come, in this order of preference, from an explicit state-dict file, from torchvision's
cache (``<torch.hub.get_dir()>/checkpoints/<file name of the weights' URL>``; ``TORCH_HOME`` moves
it), or from a download by torchvision when downloads are allowed. Offline with nothing cached,
:class:`WeightsError` names the file that was expected and how to provide it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from saliency.errors import WeightsError
from saliency.models.weights import (RANDOM, RANDOM_SEED, apply_state_dict, downloads_allowed, random_phrase,
                                     read_state_dict, seeded)
from saliency.preprocess import Preprocessing

if TYPE_CHECKING:
    from torchvision.models import WeightsEnum

_AUX_PREFIXES = {"inception_v3": ("AuxLogits.",), "googlenet": ("aux1.", "aux2.")}
_DENSENET_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def _tv():
    """``torchvision.models``, imported on first use: the bundled demo model never needs it."""
    import torchvision.models

    return torchvision.models


@lru_cache(maxsize=1)
def names() -> tuple[str, ...]:
    """Every torchvision classification architecture (``torchvision.models.list_models``)."""
    return tuple(_tv().list_models(module=_tv()))


def is_name(name: str) -> bool:
    return name.lower() in names()


@dataclass(frozen=True)
class ZooWeights:
    """One set of pretrained weights of one architecture, and where they live on this machine."""

    name: str
    enum: WeightsEnum

    @property
    def cache_path(self) -> Path:
        """Where torchvision keeps (or would download) the weights file."""
        return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(self.enum.url)

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.enum.meta["categories"])

    @property
    def preprocessing(self) -> Preprocessing:
        t = self.enum.transforms()
        interpolation = getattr(t.interpolation, "value", str(t.interpolation)).lower()
        return Preprocessing(crop=int(t.crop_size[0]), resize=int(t.resize_size[0]), mean=tuple(t.mean),
                             std=tuple(t.std), interpolation=interpolation)

    @property
    def description(self) -> str:
        meta = self.enum.meta
        accuracy = meta.get("_metrics", {}).get("ImageNet-1K", {}).get("acc@1")
        score = f", ImageNet top-1 {accuracy:.1f} %" if accuracy else ""
        params = meta.get("num_params")
        size = f", {params / 1e6:.1f} M parameters" if params else ""
        return f"torchvision {self.name} ({self.enum.name}{score}{size})"


def weights_for(name: str, which: str | None = None) -> ZooWeights:
    """The default weights of ``name``, or its weights called ``which`` (e.g. ``IMAGENET1K_V1``)."""
    arch = name.lower()
    enum_class = _tv().get_model_weights(arch)
    if which is None or which.upper() == "DEFAULT":
        return ZooWeights(arch, enum_class.DEFAULT)
    known = ", ".join(m.name for m in enum_class if m.meta.get("categories"))
    try:
        member = enum_class[which.upper()]
    except KeyError:
        raise WeightsError(f"'{which}' is neither a file nor a weights name of {arch} ({known})") from None
    if not member.meta.get("categories"):
        raise WeightsError(f"{arch} weights {member.name} are a feature extractor without class scores; "
                           f"choose one of {known}")
    return ZooWeights(arch, member)


def is_weights_name(name: str, which: str) -> bool:
    """Whether ``which`` names one of ``name``'s torchvision weights (``DEFAULT``, ``IMAGENET1K_V2``...)."""
    enum_class = _tv().get_model_weights(name.lower())
    return which.upper() == "DEFAULT" or which.upper() in enum_class.__members__


def load(name: str, weights: str | os.PathLike | None = None, *, download: bool | None = None,
         num_classes: int | None = None, seed: int = RANDOM_SEED) -> tuple[nn.Module, ZooWeights, str, str]:
    """Build ``name`` and load its weights; returns the module (eval mode), its :class:`ZooWeights`
    (preprocessing, labels), a phrase saying where the weights came from and the absolute path of
    the file they were read from (``""`` for random initialisation).

    ``weights``: ``None`` / ``"DEFAULT"`` / a weights name (cache, else download), a file path, or
    ``"random"`` (drawn from ``seed``: the same network every time). ``num_classes`` (default: the
    ImageNet 1000) sizes the head for fine-tuned files.
    """
    arch = name.lower()
    text = None if weights is None else os.fspath(weights)
    if text is not None and text.lower() == RANDOM:
        chosen = weights_for(arch)
        with seeded(seed):
            module = _build(arch, chosen, num_classes, pretrained=False, aux=False)
        return module.eval(), chosen, random_phrase(seed), ""
    if text is not None and not is_weights_name(arch, text) and not os.path.exists(text) \
            and re.fullmatch(r"\w+", text):
        weights_for(arch, text)  # raises: neither a file nor one of the architecture's weights names
    if text is not None and not is_weights_name(arch, text):
        chosen = weights_for(arch)
        state = read_state_dict(text)
        source, file = f"file '{text}'", text
    else:
        chosen = weights_for(arch, text)
        state = _cached_or_downloaded(chosen, download)
        source, file = f"file '{chosen.cache_path}'", chosen.cache_path
    if arch.startswith("densenet"):
        state = _renamed_densenet_keys(state)
    aux = any(k.startswith(_AUX_PREFIXES.get(arch, ("\0",))) for k in state)
    module = _build(arch, chosen, num_classes, pretrained=True, aux=aux)
    apply_state_dict(module, state, source=source, model=arch)
    if aux:
        _drop_aux(module, arch)
    return module.eval(), chosen, source, os.path.abspath(file)


def _cached_or_downloaded(chosen: ZooWeights, download: bool | None) -> dict[str, Tensor]:
    path = chosen.cache_path
    if path.is_file():
        return read_state_dict(path)
    how = (f"download it on a machine with network access from {chosen.enum.url} and place it at "
           f"'{path}' (TORCH_HOME moves that folder), or pass a state-dict file with --weights FILE "
           "(weights=FILE in Python)")
    if not downloads_allowed(download):
        raise WeightsError(f"weights for {chosen.name} are not cached and downloads are off: expected "
                           f"the file '{path}'; {how}")
    try:
        state = torch.hub.load_state_dict_from_url(chosen.enum.url, progress=True, check_hash=True,
                                                   map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - network, disk and hash errors all end the same way
        raise WeightsError(f"could not download the weights for {chosen.name} to '{path}' ({exc}); "
                           f"{how}") from exc
    return state


def _build(arch: str, chosen: ZooWeights, num_classes: int | None, *, pretrained: bool, aux: bool) -> nn.Module:
    """The architecture built as torchvision builds it for ``chosen`` weights, without loading them."""
    kwargs: dict[str, object] = {"num_classes": num_classes or len(chosen.labels)}
    min_size = chosen.enum.meta.get("min_size")
    if arch.startswith("vit_") and min_size:
        kwargs["image_size"] = min_size[0]
    if arch.startswith("maxvit") and min_size:
        kwargs["input_size"] = tuple(min_size)
    if arch in _AUX_PREFIXES:
        kwargs.update(aux_logits=aux, transform_input=pretrained, init_weights=not pretrained)
    return _tv().get_model(arch, weights=None, **kwargs)


def _drop_aux(module: nn.Module, arch: str) -> None:
    """Remove the auxiliary classifiers, as torchvision does after loading pretrained weights."""
    module.aux_logits = False
    if arch == "inception_v3":
        module.AuxLogits = None
    else:
        module.aux1 = None
        module.aux2 = None


def _renamed_densenet_keys(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Old DenseNet checkpoints spell ``norm.1``; the module now says ``norm1`` (as torchvision fixes)."""
    renamed = {}
    for key, value in state.items():
        match = _DENSENET_OLD_KEY.match(key)
        renamed[match.group(1) + match.group(2) if match else key] = value
    return renamed
