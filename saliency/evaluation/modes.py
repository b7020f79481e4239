"""Run a caller's model for measurements without changing it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """Eval mode and no gradients for the block; every module's training flag comes back afterwards
    (a model left in training mode would otherwise update its batch-norm statistics)."""
    saved = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, training in saved.items():
            module.training = training
