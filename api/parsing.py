"""Read an explain request (images and parameters) into an :class:`ExplainRequest`, or say what is wrong."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import IO, Any

from flask import Request
from werkzeug.exceptions import BadRequest, HTTPException, RequestEntityTooLarge
from werkzeug.utils import cached_property
from werkzeug.wsgi import get_input_stream
from werkzeug.datastructures import MultiDict

from saliency.api.budget import reserve
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


class BodyTooLarge(RequestEntityTooLarge):
    """A body over the upload limit, whether it came with a Content-Length or chunked."""


class InMemoryRequest(Request):
    """A request whose uploaded files stay in memory (the form parser writes no temporary files).

    Its body is read whole or refused, however it is framed: more than ``MAX_CONTENT_LENGTH``
    bytes is a 413 (a chunked body is never cut short silently), a body the server cannot decode
    (a malformed chunk) a 400, and a form with too many parts a 413 that says so.
    """

    def _get_file_stream(self, total_content_length: int | None, content_type: str | None,
                         filename: str | None = None, content_length: int | None = None) -> IO[bytes]:
        return io.BytesIO()

    @property
    def max_form_memory_size(self) -> int | None:
        return self.max_content_length  # a text field is bounded by the body limit, like a file

    @cached_property
    def stream(self) -> IO[bytes]:  # type: ignore[override]
        limit = self.max_content_length
        inner = get_input_stream(self.environ, max_content_length=None if limit is None else limit + 1)
        return inner if limit is None else _CheckedBody(inner, limit)

    def _load_form_data(self) -> None:
        try:
            super()._load_form_data()
        except RequestEntityTooLarge as exc:
            limit = self.max_content_length
            if isinstance(exc, BodyTooLarge) or (limit is not None and (self.content_length or 0) > limit):
                raise
            raise RequestEntityTooLarge(
                f"the form has more than {self.max_form_parts} parts, the most this server reads; send the "
                "image(s) as the field 'image' and the parameters in the query") from None


class _CheckedBody(io.RawIOBase):
    """The body stream, refusing more than ``limit`` bytes and turning a server's decoding error into a 400."""

    def __init__(self, stream: IO[bytes], limit: int) -> None:
        self._stream, self._limit, self._read = stream, limit, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            data = self._stream.read(len(buffer))
        except HTTPException:
            raise
        except Exception as exc:  # e.g. gunicorn's InvalidChunkSize: the client sent a broken body
            raise BadRequest(f"the request body is malformed ({type(exc).__name__}); send a well-formed "
                             "chunked body, or the body with a Content-Length") from None
        self._read += len(data)
        if self._read > self._limit:
            raise BodyTooLarge(f"the request body is larger than this server accepts "
                               f"({self._limit / 1024 / 1024:.3g} MB), however it is sent; send a smaller image")
        buffer[:len(data)] = data
        return len(data)


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
    named = [n for n in names if n != "all"]  # every name is checked, even beside 'all'
    chosen = tuple(m.name for m in resolve_methods(named)) if named else ()
    refused = [n for n in chosen if n not in settings.methods]
    if refused:
        raise UnknownMethodError(f"method {', '.join(map(repr, refused))} is not offered by this server; "
                                 f"choose from {', '.join(settings.methods)} or 'all'")
    return settings.methods if "all" in names else chosen


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
    reserve(req)  # the work is allowed: hold its pictures' memory in this worker's budget until it ends


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
