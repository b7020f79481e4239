"""Run the service: gunicorn in production (workers from settings, each serving with waitress's
buffering threads, see :mod:`saliency.api.worker`), Flask's server with ``dev``."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Sequence
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter

from saliency.api.app import create_app
from saliency.api.config import load_settings
from saliency.errors import SaliencyError

log = logging.getLogger("gunicorn.error")
WORKER_CLASS = "saliency.api.worker.WaitressWorker"
WORKER_BOOT_ERROR = Arbiter.WORKER_BOOT_ERROR
APP_LOAD_ERROR = Arbiter.APP_LOAD_ERROR


class ServerStartError(SaliencyError):
    """The server could not start (a bad setting, model or weights)."""


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
        try:
            return create_app(self.app_config)
        except SaliencyError as exc:  # one line, not a traceback; the arbiter stops on exit code 3
            log.error("%s", exc)
            raise SystemExit(WORKER_BOOT_ERROR) from None


def serve(host: str = "127.0.0.1", port: int = 8000, workers: int | None = None, threads: int | None = None,
          dev: bool = False, model: str | None = None, weights: str | None = None, labels: str | None = None,
          input_size: int | None = None, resize: int | None = None, mean: float | Sequence[float] | None = None,
          std: float | Sequence[float] | None = None, **settings: Any) -> None:
    """Serve until interrupted. ``None`` arguments fall back to ``SALIENCY_*`` variables and defaults;
    ``labels``/``input_size``/``resize``/``mean``/``std``: your own model's class names file and
    preprocessing (see :func:`saliency.models.load_model`); ``settings``: more
    :class:`~saliency.api.config.Settings` fields (``max_upload_mb=4``, ...). Every worker builds its
    app from the same settings."""
    model_settings = dict(model=model, weights=weights, labels=labels, input_size=input_size, resize=resize,
                          mean=mean, std=std)
    config = {k: v for k, v in dict(settings, **model_settings).items() if v is not None}
    resolved = load_settings(config)  # fail early, in the parent, on a bad setting
    _check_address(host, port)
    if dev:
        create_app(config).run(host=host, port=port, threaded=True)
        return
    options = {
        "bind": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
        "workers": workers or resolved.workers,
        "threads": threads or resolved.threads,
        "worker_class": WORKER_CLASS,  # waitress inside: slow clients hold no thread
        "timeout": resolved.timeout,
        "graceful_timeout": resolved.shutdown_seconds,
        "accesslog": "-",
        "preload_app": False,
        "control_socket_disable": True,  # several servers may share a host; nothing uses it
    }
    master = os.getpid()
    try:
        SaliencyServer(options, config).run()
    except SystemExit as exc:  # workers are forked from here too: only the master may translate
        if os.getpid() == master and exc.code in (WORKER_BOOT_ERROR, APP_LOAD_ERROR):
            raise ServerStartError("the service did not start: a worker could not load the app "
                                   "(the reason is logged above)") from None
        raise


def _check_address(host: str, port: int) -> None:
    """Fail at once, in one line, where the server could not listen (gunicorn retries, then logs)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn and Flask do
            probe.bind(address)
    except OSError as exc:
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        raise ServerStartError(f"cannot listen on {shown}: {exc.strerror or exc}; "
                               "choose another --port (or --host), or stop what is using it") from None
