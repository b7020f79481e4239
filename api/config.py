"""Service settings: defaults, overridden by ``SALIENCY_*`` environment variables, then by a mapping."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from saliency.errors import SaliencyError
from saliency.methods import METHODS, resolve_methods

ENV_PREFIX = "SALIENCY_"


class ConfigError(SaliencyError, ValueError):
    """A setting that does not parse or is out of range."""


@dataclass(frozen=True)
class Settings:
    """What one app serves. Environment: ``SALIENCY_<FIELD>`` (e.g. ``SALIENCY_MAX_UPLOAD_MB=8``)."""

    model: str = "demo"                 #: model name: "demo", a torchvision name, or "pkg.mod:factory"
    weights: str | None = None          #: weights file, or "random" (None: the model's own default)
    labels: str | None = None           #: class names file, one per line (for your own model)
    input_size: int | None = None       #: side of the square model input (None: the model's own, 224 for yours)
    resize: int | None = None           #: shorter side before the centre crop (None: the model's own ratio)
    mean: tuple[float, ...] | None = None  #: normalisation mean, one value or R,G,B (None: the model's own)
    std: tuple[float, ...] | None = None   #: normalisation std, one value or R,G,B (None: the model's own)
    device: str | None = None           #: torch device for the model ("cpu", "cuda"; None: where it loads)
    max_upload_mb: float = 16.0         #: largest request body accepted (larger: 413)
    max_pixels: int = 40_000_000        #: largest decoded image accepted (width × height)
    max_images: int = 16                #: most images in one request (one batch)
    max_topk: int = 10                  #: most classes explained per image with ``topk``
    max_samples: int = 64               #: largest ``samples``/``steps``/``batch_size`` a request may ask for
    max_passes: int = 1024              #: most backward passes one request may cost (images × classes × samples)
    max_render_pixels: int = 200_000_000  #: most pixels of pictures one request may draw (maps × picture size)
    methods: tuple[str, ...] = METHODS  #: methods this server offers (a subset of the registry)
    default_method: str = "guided"      #: method used when a request names none (if offered)
    threads: int = 40                   #: request threads per worker (at least max_queue + batch_size)
    workers: int = 1                    #: gunicorn worker processes (each loads the model once)
    torch_threads: int | None = None    #: torch intra-op threads per worker (None: torch's default)
    timeout: int = 120                  #: seconds before gunicorn restarts a silent worker
    graceful_timeout: int | None = None  #: seconds requests in flight may finish after SIGTERM (None: timeout)
    header_timeout: float = 10.0        #: seconds a client has to send a whole request head (else dropped)
    body_timeout: float = 60.0          #: seconds a client has, after the head, to send the whole body
    memory_budget_mb: float = 1536.0    #: most MB of pictures one worker decodes and draws at once (over: 413)
    memory_wait: float = 5.0            #: seconds a request waits for room in the budget before a 503
    batch_size: int = 8                 #: most images one model call explains, gathered across requests
    batch_delay_ms: float = 5.0         #: longest a request waits for others to share its model call (0: off)
    max_queue: int = 32                 #: most requests waiting for the model per worker (more: 503 at once)
    queue_timeout: float = 30.0         #: seconds a request may wait for the model before a 503

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def shutdown_seconds(self) -> int:
        """How long requests in flight may run on after SIGTERM: ``graceful_timeout``, else ``timeout``."""
        return self.graceful_timeout or self.timeout


def load_settings(config: Mapping[str, Any] | None = None,
                  environ: Mapping[str, str] | None = None) -> Settings:
    """Defaults, then ``SALIENCY_*`` variables from ``environ`` (default ``os.environ``), then ``config``.

    ``config`` keys are field names in any case (``"model"`` or ``"MODEL"``) and may carry the prefix.
    Raises :class:`ConfigError` naming the setting for a value that does not parse.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in fields(Settings):
        raw = environ.get(ENV_PREFIX + f.name.upper())
        if raw not in (None, ""):
            values[f.name] = _parse(f.name, raw)
    for key, value in (config or {}).items():
        name = key.lower().removeprefix(ENV_PREFIX.lower())
        if name not in {f.name for f in fields(Settings)}:
            continue  # Flask settings (TESTING, ...) share the mapping
        values[name] = _parse(name, value) if isinstance(value, str) else _coerce(name, value)
    settings = replace(Settings(), **values)
    offered = tuple(m.name for m in resolve_methods(list(settings.methods)))
    default = settings.default_method if settings.default_method in offered else offered[0]
    settings = replace(settings, methods=offered, default_method=default)
    _check(settings)
    return settings


def _parse(name: str, raw: str) -> Any:
    if name in SERVER_LIMITS:
        return _server_limit(name, raw)
    try:
        if name in ("max_upload_mb", "batch_delay_ms", "queue_timeout"):
            return float(raw)
        if name in ("max_pixels", "max_images", "max_topk", "max_samples", "max_passes", "max_render_pixels",
                    "threads", "workers", "torch_threads", "timeout", "input_size", "resize", "batch_size",
                    "max_queue"):
            return int(raw)
    except ValueError:
        raise ConfigError(f"{ENV_PREFIX}{name.upper()} must be a number, got {raw!r}") from None
    if name == "methods":
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    if name in ("mean", "std"):
        return _channel_values(name, raw.split(","), raw)
    return raw


#: Settings of the server itself (deadlines, shutdown, memory): positive numbers.
SERVER_LIMITS = ("graceful_timeout", "header_timeout", "body_timeout", "memory_budget_mb", "memory_wait")


def _server_limit(name: str, raw: Any) -> float | int:
    try:
        value = int(raw) if name == "graceful_timeout" else float(raw)
    except (TypeError, ValueError):
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise ConfigError(f"{ENV_PREFIX}{name.upper()} must be a positive number, got {raw!r}")
    return value


def _coerce(name: str, value: Any) -> Any:
    """A setting given as a Python value: ``mean``/``std`` as one number or a sequence, to a tuple."""
    if name in ("mean", "std") and value is not None:
        parts = list(value) if isinstance(value, (list, tuple)) else [value]
        return _channel_values(name, parts, value)
    return value


def _channel_values(name: str, parts: list[Any], raw: Any) -> tuple[float, ...]:
    """One value for every channel, or one per channel (R,G,B): finite numbers, positive for ``std``."""
    try:
        values = tuple(float(p.strip() if isinstance(p, str) else p) for p in parts)
    except (TypeError, ValueError):
        values = ()
    if len(values) not in (1, 3) or not all(math.isfinite(v) for v in values):
        raise ConfigError(f"{ENV_PREFIX}{name.upper()} must be one number or three separated by commas "
                          f"(R,G,B), got {raw!r}")
    if name == "std" and any(v <= 0 for v in values):
        raise ConfigError(f"{ENV_PREFIX}STD values must be positive, got {raw!r}")
    return values


def _check(settings: Settings) -> None:
    for name in ("max_upload_mb", "max_pixels", "max_images", "max_topk", "max_samples", "max_passes",
                 "max_render_pixels", "threads", "workers", "timeout", "batch_size", "max_queue", "queue_timeout"):
        if not getattr(settings, name) > 0:
            raise ConfigError(f"{ENV_PREFIX}{name.upper()} must be positive, got {getattr(settings, name)}")
    if not 0 <= settings.batch_delay_ms <= 10_000:
        raise ConfigError(f"{ENV_PREFIX}BATCH_DELAY_MS must be from 0 (no batching) to 10000, "
                          f"got {settings.batch_delay_ms}")
    for name in SERVER_LIMITS:
        if getattr(settings, name) is not None:
            _server_limit(name, getattr(settings, name))
    for name in ("input_size", "resize"):
        value = getattr(settings, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            raise ConfigError(f"{ENV_PREFIX}{name.upper()} must be a positive whole number of pixels, got {value!r}")
    if settings.input_size is not None and settings.resize is not None and settings.resize < settings.input_size:
        raise ConfigError(f"{ENV_PREFIX}RESIZE ({settings.resize}) must be at least {ENV_PREFIX}INPUT_SIZE "
                          f"({settings.input_size}): the picture is resized, then centre-cropped")
