"""Read an explain request (images and parameters) into an :class:`ExplainRequest`, or say what is wrong."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import IO, Any

from flask import Request
from werkzeug.datastructures import MultiDict

from saliency.api.config import Settings
from saliency.api.errors import RequestError, UnsupportedMediaError
from saliency.errors import ImageError, UnknownMethodError, UnknownModelError
from saliency.methods import REGISTRY, resolve_methods, resolve_options
from saliency.render import DEFAULT_ALPHA, DEFAULT_STYLE, STYLES

FORMATS = ("json", "png")
RAW_FORMATS = ("none", "npy")
#: Method options a request may set (``samples``, ``steps``, ``layer`` …), read from the registry.
OPTIONS: tuple[str, ...] = tuple(dict.fromkeys(k for m in REGISTRY.values() for k in m.options))
#: Options that multiply the work of a request, and so are capped by ``Settings.max_samples``.
COSTLY_OPTIONS = ("samples", "steps", "batch_size")
PARAMETERS = ("method", "target", "topk", "style", "format", "raw", "alpha", "model") + OPTIONS


class InMemoryRequest(Request):
    """A request whose uploaded files stay in memory: nothing a client sends is written to disk."""

    def _get_file_stream(self, total_content_length: int | None, content_type: str | None,
                         filename: str | None = None, content_length: int | None = None) -> IO[bytes]:
        return io.BytesIO()


@dataclass(frozen=True)
class ExplainRequest:
    """One explain call: encoded images (one batch) and what to compute and return."""

    images: tuple[bytes, ...]
    names: tuple[str, ...]
    methods: tuple[str, ...]
    target: str | None = None
    topk: int = 1
    style: str = DEFAULT_STYLE
    format: str = "json"
    raw: str = "none"
    alpha: float = DEFAULT_ALPHA
    options: tuple[tuple[str, Any], ...] = ()


def parse_explain_request(request: Request, settings: Settings, model_name: str) -> ExplainRequest:
    """Images from multipart field(s) ``image`` or a raw image body; parameters from query or form."""
    values = request.values
    if "image" in values:  # e.g. curl -F image=photo.jpg, without the @
        raise RequestError(f"the field 'image' holds text ({values['image'][:40]!r}), not a file; attach the file "
                           "(curl -F image=@photo.jpg, with the @) or send it as a raw body with an image/* Content-Type")
    check_parameters(values, PARAMETERS)
    model = _one(values, "model")
    if model is not None and model != model_name:
        raise UnknownModelError(f"this server serves the model {model_name!r}, not {model!r}; "
                                "leave out 'model' or start a server with SALIENCY_MODEL set")
    images, names = _images(request, settings)
    return explain_request(values, images, names, settings)


def check_parameters(values: MultiDict, allowed: tuple[str, ...]) -> None:
    """Refuse parameters outside ``allowed``, naming what the endpoint takes."""
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise RequestError(f"unknown parameter {', '.join(repr(name[:40]) for name in unknown[:5])}; "
                           f"this endpoint takes {', '.join(allowed)}")


def explain_request(values: MultiDict, images: tuple[bytes, ...], names: tuple[str, ...],
                    settings: Settings) -> ExplainRequest:
    """The request for ``images`` with the parameters ``values`` (strings, as in a query), checked."""
    target = _one(values, "target")  # an index or a label: the model's class_index decides
    topk = _number(_one(values, "topk"), "topk", 1, settings.max_topk, int)
    if target is not None and topk is not None:
        raise RequestError("give either 'target' (the class to explain) or 'topk' (the k most likely classes), not both")
    fmt = _choice(_one(values, "format"), "format", FORMATS, "json")
    alpha = _number(_one(values, "alpha"), "alpha", 0.0, 1.0)
    methods = _methods(values.getlist("method"), settings)
    parsed = ExplainRequest(
        images=images, names=names, methods=methods, options=_options(values, methods, settings),
        target=target, topk=topk or 1, style=_choice(_one(values, "style"), "style", STYLES, DEFAULT_STYLE),
        format=fmt, raw=_choice(_one(values, "raw"), "raw", RAW_FORMATS, "none"),
        alpha=DEFAULT_ALPHA if alpha is None else alpha)
    _check_work(parsed, settings)
    if fmt == "png" and (len(parsed.images) > 1 or len(parsed.methods) > 1 or parsed.topk > 1):
        raise RequestError(
            f"format=png returns one picture: send one image, one method and one target "
            f"(got {len(parsed.images)} images, methods {', '.join(parsed.methods)}, topk {parsed.topk}); "
            "use format=json for more")
    if fmt == "png" and parsed.raw != "none":
        raise RequestError(f"raw={parsed.raw} adds the raw maps to a JSON answer; format=png returns the picture "
                           "alone: use format=json, or leave out raw")
    return parsed


def _images(request: Request, settings: Settings) -> tuple[tuple[bytes, ...], tuple[str, ...]]:
    mimetype = request.mimetype or ""
    if mimetype.startswith("image/"):
        data = request.get_data(cache=False)
        if not data:
            raise ImageError("the request body is empty; send the image bytes as the body")
        return (data,), ("body",)
    if mimetype not in ("multipart/form-data", "application/x-www-form-urlencoded", ""):
        raise UnsupportedMediaError(
            f"cannot read an image from a {mimetype} body; send multipart/form-data with a field "
            "'image' (curl -F image=@photo.jpg) or the raw image with an image/* Content-Type")
    files = request.files.getlist("image")
    if not files:
        raise RequestError("no image: send it as the multipart form field 'image' "
                           "(curl -F image=@photo.jpg ...) or as a raw body with an image/* Content-Type")
    if len(files) > settings.max_images:
        raise RequestError(f"{len(files)} images in one request; this server takes at most {settings.max_images}")
    images, names = [], []
    for i, f in enumerate(files):
        data = f.read()
        name = f.filename or f"image {i}"
        if not data:
            raise ImageError(f"the uploaded file {name!r} is empty")
        images.append(data)
        names.append(name)
    return tuple(images), tuple(names)


def _one(values, name: str) -> str | None:
    got = values.getlist(name)
    if len(got) > 1:
        raise RequestError(f"parameter {name!r} given {len(got)} times; give it once")
    value = got[0].strip() if got else None
    return value or None


def _methods(raw: list[str], settings: Settings) -> tuple[str, ...]:
    names = [part.strip() for item in raw for part in item.split(",") if part.strip()]
    if not names:
        return (settings.default_method,)
    if "all" in names:
        return settings.methods
    chosen = tuple(m.name for m in resolve_methods(names))
    refused = [n for n in chosen if n not in settings.methods]
    if refused:
        raise UnknownMethodError(f"method {', '.join(map(repr, refused))} is not offered by this server; "
                                 f"choose from {', '.join(settings.methods)} or 'all'")
    return chosen


def _options(values, methods: tuple[str, ...], settings: Settings) -> tuple[tuple[str, Any], ...]:
    given = {name: value for name in OPTIONS if (value := _one(values, name)) is not None}
    merged = resolve_options([REGISTRY[m] for m in methods], given)  # unknown for these methods: 400
    for name, value in merged.items():
        if name in given and isinstance(value, float) and not math.isfinite(value):
            raise RequestError(f"option {name!r} must be a finite number, got {given[name]!r}")
    for name in COSTLY_OPTIONS:
        if name in given and merged[name] > settings.max_samples:
            raise RequestError(f"{name} must be at most {settings.max_samples} on this server, got {merged[name]}")
    return tuple((name, merged[name]) for name in given)


def passes(req: ExplainRequest) -> int:
    """Backward passes a request costs: per image and class, 1 per method, or its samples/steps."""
    merged = {**resolve_options([REGISTRY[m] for m in req.methods], None), **dict(req.options)}
    per_class = sum(merged["samples"] if "samples" in REGISTRY[m].options
                    else merged["steps"] if "steps" in REGISTRY[m].options else 1 for m in req.methods)
    return len(req.images) * req.topk * per_class


def _check_work(req: ExplainRequest, settings: Settings) -> None:
    cost = passes(req)
    if cost > settings.max_passes:
        raise RequestError(f"this request needs {cost} backward passes (images × classes × samples or steps "
                           f"per method); this server allows {settings.max_passes}: send fewer images, "
                           "classes or samples, or split it")


def _number(raw: str | None, name: str, low: float, high: float, kind: type[int] | type[float] = float) -> Any:
    """``raw`` read as ``kind`` (int or float) and checked to lie in ``[low, high]``; ``None`` if not given."""
    if raw is None:
        return None
    try:
        value = kind(raw)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise RequestError(f"{name} must be {what} from {low:g} to {high:g}, got {raw!r}") from None
    if not low <= value <= high:
        raise RequestError(f"{name} must be from {low:g} to {high:g}, got {value:g}")
    return value


def _choice(raw: str | None, name: str, allowed: tuple[str, ...], default: str) -> str:
    if raw is None:
        return default
    if raw.lower() not in allowed:
        raise RequestError(f"unknown {name} {raw!r}; choose from {', '.join(allowed)}")
    return raw.lower()
