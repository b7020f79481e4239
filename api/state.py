"""What one app holds: its settings, its loaded model (shared by all request threads), its metrics and its
model thread (the batcher, which explains queued requests together)."""

from __future__ import annotations

from dataclasses import dataclass
from flask import current_app

from saliency.api.batching import Batcher
from saliency.api.config import Settings
from saliency.api.metrics import Metrics
from saliency.models import LoadedModel

EXTENSION = "saliency"


@dataclass(frozen=True)
class AppState:
    settings: Settings
    model: LoadedModel
    metrics: Metrics
    batcher: Batcher


def state() -> AppState:
    """The state of the app handling the current request."""
    return current_app.extensions[EXTENSION]
