"""Reading state dicts safely and fitting them to a model, with errors that say what to do."""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import threading
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor, nn

from saliency.errors import WeightsError

RANDOM = "random"
"""``weights="random"``: keep the architecture's random initialisation (tests, benchmarks)."""
RANDOM_SEED = 0
"""The seed ``weights="random"`` draws from: the same network in every process and run."""
OFFLINE_ENV = "SALIENCY_OFFLINE"
"""Set to 1 (or true/yes) to forbid weight downloads."""

_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights")


def downloads_allowed(download: bool | None = None) -> bool:
    """``download`` when given, otherwise true unless :data:`OFFLINE_ENV` is set."""
    if download is not None:
        return bool(download)
    return os.environ.get(OFFLINE_ENV, "").strip().lower() not in ("1", "true", "yes", "on")


_SEEDING = threading.RLock()  # one seeded build at a time: another's draws would change this one's parameters


@contextmanager
def seeded(seed: int = RANDOM_SEED) -> Iterator[None]:
    """Draws from torch's CPU generator inside come from ``seed``; the caller's state is restored after.

    ``weights="random"`` builds its module inside, so random initialisation gives the same
    parameters in every process and run, and loading a model does not move the caller's RNG.
    """
    with _SEEDING, torch.random.fork_rng(devices=[]):  # the CPU generator only: modules are built there
        torch.default_generator.manual_seed(seed)  # not torch.manual_seed: it would also queue CUDA's seeding
        yield


def random_phrase(seed: int = RANDOM_SEED) -> str:
    """How a loaded model's ``weights`` names ``weights="random"`` drawn from ``seed``."""
    return "random initialisation" if seed == RANDOM_SEED else f"random initialisation (seed {seed})"


def file_digest(path: str | os.PathLike) -> str:
    """``"sha256:<hex>"`` of the file's bytes: what identifies a weights file however its path is spelt."""
    try:
        digest = hashlib.sha256()
        with open(path, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
        return "sha256:" + digest.hexdigest()
    except OSError as exc:
        raise WeightsError(f"cannot read weights file '{os.fspath(path)}': {exc.strerror or exc}") from None


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """The tensors in the file at ``path``, loaded with ``weights_only=True`` onto the CPU.

    Accepts a plain state dict, a checkpoint that wraps one (``{"state_dict": ...}``,
    ``{"model": ...}``), and keys prefixed by ``module.`` (saved from DataParallel).
    """
    file = Path(path)
    if not file.is_file():
        where = "is a folder" if file.is_dir() else "does not exist"
        raise WeightsError(f"weights file '{file}' {where}; pass the path of a saved state dict")
    try:
        with warnings.catch_warnings():  # torch's notes on pickle protocols say nothing the error does not
            warnings.simplefilter("ignore")
            loaded = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "unsupported global" not in str(exc).lower():   # garbage, not a file of Python objects
            raise WeightsError(_not_a_state_dict(file)) from None
        raise WeightsError(
            f"weights file '{file}' holds Python objects that are not loaded for safety; "
            "save torch.save(model.state_dict(), path) instead") from None
    except OSError as exc:
        raise WeightsError(f"cannot read weights file '{file}': {exc.strerror or exc}") from None
    except Exception:  # torch's reasons for other files are several lines and suggest loading unsafely
        raise WeightsError(_not_a_state_dict(file)) from None
    state = _unwrap(loaded)
    if state is None:
        raise WeightsError(f"weights file '{file}' does not hold a state dict (found "
                           f"{type(loaded).__name__}); save torch.save(model.state_dict(), path)")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _not_a_state_dict(file: Path) -> str:
    return (f"weights file '{file}' is not a state dict saved by torch.save (or it is incomplete); "
            "save torch.save(model.state_dict(), path) and pass that file")


def _unwrap(loaded: object) -> dict[str, Tensor] | None:
    if isinstance(loaded, Mapping):
        if loaded and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in loaded.items()):
            return dict(loaded)
        for key in _WRAPPER_KEYS:
            inner = loaded.get(key)
            if isinstance(inner, Mapping):
                return _unwrap(inner)
    return None


def apply_state_dict(module: nn.Module, state: Mapping[str, Tensor], *, source: str, model: str) -> None:
    """Load ``state`` into ``module`` strictly; a mismatch raises :class:`WeightsError` saying where."""
    own = module.state_dict()
    # BatchNorm fills in num_batches_tracked itself when old checkpoints lack it
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    mismatched = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or mismatched:
        problems = []
        if mismatched:
            k = mismatched[0]
            problems.append(f"shape of {k} is {list(state[k].shape)} in the file but {list(own[k].shape)} "
                            f"in the model ({len(mismatched)} such)")
        if missing:
            problems.append(f"{len(missing)} missing key(s) ({_few(missing)})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected key(s) ({_few(unexpected)})")
        hint = ("; a different number of classes? pass the labels file that goes with the weights"
                if mismatched and _looks_like_head(mismatched[0]) else
                "; are these weights for this architecture?")
        raise WeightsError(f"weights {source} do not fit model '{model}': " + "; ".join(problems) + hint)
    module.load_state_dict(state, strict=True)


def _few(keys: list[str]) -> str:
    return ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")


def _looks_like_head(key: str) -> bool:
    return bool(re.search(r"(^|\.)(fc|classifier|head|heads|last_linear|linear)(\.|$)", key))
