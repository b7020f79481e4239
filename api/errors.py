"""Every error becomes a JSON response ``{"error": code, "detail": message}``, registered once."""

from __future__ import annotations

import logging
import re

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from saliency import errors
from saliency.api.batching import Overloaded

log = logging.getLogger("saliency.api")

#: HTTP status per library error (the first matching base class wins); other SaliencyErrors: 400.
STATUS: tuple[tuple[type[errors.SaliencyError], int], ...] = (
    (Overloaded, 503),
    (errors.UnknownModelError, 404),
    (errors.NoReluError, 422),
    (errors.ModelOutputError, 422),
    (errors.SaliencyError, 400),
)


class RequestError(errors.SaliencyError):
    """A request the API cannot parse (missing field, bad parameter value)."""


class UnsupportedMediaError(RequestError):
    """A request body that is neither multipart form data nor an image."""


#: Error codes that read better than the class name.
CODES: dict[type[Exception], str] = {
    errors.ImageError: "invalid_image",
    errors.TargetError: "invalid_target",
    errors.InputError: "invalid_input",
    errors.OptionError: "invalid_option",
    RequestError: "bad_request",
    UnsupportedMediaError: "unsupported_media_type",
}


def error_code(exc: BaseException) -> str:
    """``UnknownMethodError`` → ``"unknown_method"``; ``Request Entity Too Large`` → ``"request_entity_too_large"``."""
    if isinstance(exc, HTTPException):
        return re.sub(r"\W+", "_", (exc.name or "http_error")).strip("_").lower()
    if type(exc) in CODES:
        return CODES[type(exc)]
    name = type(exc).__name__.removesuffix("Error") or "error"
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def error_status(exc: errors.SaliencyError) -> int:
    if isinstance(exc, UnsupportedMediaError):
        return 415
    return next(status for cls, status in STATUS if isinstance(exc, cls))


def error_response(code: str, detail: str, status: int) -> Response:
    response = jsonify(error=code, detail=detail)
    response.status_code = status
    return response


def register_error_handlers(app: Flask) -> None:
    """Map library errors to 4xx, HTTP errors to their own status, anything else to a logged 500."""

    @app.errorhandler(errors.SaliencyError)
    def _saliency_error(exc: errors.SaliencyError) -> Response:
        response = error_response(error_code(exc), str(exc), error_status(exc))
        if isinstance(exc, Overloaded):
            response.headers["Retry-After"] = str(exc.retry_after)
        return response

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        detail = exc.description or exc.name
        if exc.code == 413 and exc.description == RequestEntityTooLarge.description:  # werkzeug's own
            limit = app.config.get("MAX_CONTENT_LENGTH")
            detail = f"the upload is larger than this server accepts ({limit / 1024 / 1024:.3g} MB); send a smaller image"
        response = error_response(error_code(exc), detail, exc.code or 500)
        if exc.code == 405 and exc.valid_methods:
            response.headers["Allow"] = ", ".join(exc.valid_methods)
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unexpected error")
        return error_response("internal_error", "the server failed to handle this request; it has been logged", 500)
