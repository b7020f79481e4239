"""Run the service: gunicorn in production (threads and workers from settings), Flask's server with ``dev``."""

from __future__ import annotations

from typing import Any

from gunicorn.app.base import BaseApplication

from saliency.api.app import create_app
from saliency.api.config import load_settings


class SaliencyServer(BaseApplication):
    """Gunicorn, configured in code. Each worker builds its own app (and loads the model once);
    the worker's threads share that model, which is safe because ``saliency.explain`` is thread-safe."""

    def __init__(self, options: dict[str, Any], config: dict[str, Any]) -> None:
        self.options = options
        self.app_config = config
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            if key in self.cfg.settings and value is not None:
                self.cfg.set(key, value)

    def load(self):
        return create_app(self.app_config)


def serve(host: str = "127.0.0.1", port: int = 8000, workers: int | None = None, threads: int | None = None,
          dev: bool = False, model: str | None = None, weights: str | None = None, **settings: Any) -> None:
    """Serve until interrupted. ``None`` arguments fall back to ``SALIENCY_*`` variables and defaults;
    ``settings``: more :class:`~saliency.api.config.Settings` fields (``max_upload_mb=4``, ...)."""
    config = {k: v for k, v in dict(settings, model=model, weights=weights).items() if v is not None}
    resolved = load_settings(config)  # fail early, in the parent, on a bad setting
    if dev:
        create_app(config).run(host=host, port=port, threaded=True)
        return
    options = {
        "bind": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
        "workers": workers or resolved.workers,
        "threads": threads or resolved.threads,
        "worker_class": "gthread",
        "timeout": resolved.timeout,
        "graceful_timeout": 10,
        "accesslog": "-",
        "preload_app": False,
    }
    SaliencyServer(options, config).run()
