"""The application factory."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from flask import Flask

import saliency
from saliency.api import budget, security
from saliency.api.batching import Batcher
from saliency.api.config import load_settings
from saliency.api.errors import register_error_handlers
from saliency.api.kserve import bp as kserve_bp
from saliency.api.metrics import Metrics
from saliency.api.parsing import InMemoryRequest
from saliency.api.state import EXTENSION, AppState
from saliency.api.views import bp
from saliency.memory import reuse_freed_memory
from saliency.models import LoadedModel, load_model
from saliency.render import render_batch

log = logging.getLogger("saliency.api")


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """A Flask app serving one model, loaded now and shared by all request threads.

    Settings come from ``SALIENCY_*`` environment variables, overridden by ``config`` (keys are
    :class:`~saliency.api.config.Settings` fields, e.g. ``{"model": "demo", "max_upload_mb": 2}``;
    other keys, such as ``TESTING``, go to ``app.config``).
    """
    settings = load_settings(config)
    app = Flask(__name__, static_folder="static", static_url_path="/static")
    app.request_class = InMemoryRequest
    app.json.sort_keys = False
    app.config.update({k: v for k, v in (config or {}).items() if k.isupper() and not k.startswith("SALIENCY_")})
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    reuse_freed_memory()
    model = load_model(settings.model, settings.weights, labels=settings.labels, input_size=settings.input_size,
                       resize=settings.resize, mean=settings.mean, std=settings.std, device=settings.device)
    warm_up(model)
    log.info("serving model %s (%d classes), methods %s", model.name, len(model.labels), ", ".join(settings.methods))
    metrics = Metrics()
    batcher = Batcher(model, max_batch=settings.batch_size, delay=settings.batch_delay_ms / 1000,
                      max_queue=settings.max_queue, queue_timeout=settings.queue_timeout, metrics=metrics)
    app.extensions[EXTENSION] = AppState(settings=settings, model=model, metrics=metrics, batcher=batcher)
    metrics.install(app)
    budget.install(app, settings)
    security.install(app)
    register_error_handlers(app)
    app.register_blueprint(bp)
    app.register_blueprint(kserve_bp)
    return app


def warm_up(model: LoadedModel) -> None:
    """Explain and render one blank input, so that the first request pays no one-off costs."""
    blank = torch.zeros((1, *model.preprocessing.shape))
    result = saliency.explain(model.module, blank, methods="vanilla")
    render_batch(result["vanilla"].cpu(), "heatmap")

