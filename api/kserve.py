"""KServe's V1 data plane: model readiness, ``:predict`` and ``:explain`` on JSON instances.

An instance is an image in TensorFlow Serving's ``b64`` convention, ``{"image": {"b64": "..."}}`` (or
``{"b64": "..."}``); ``parameters`` are those of ``POST /v1/explain``. Both verbs read the payload into
the same :class:`~saliency.api.parsing.ExplainRequest` and run it through the same entry point as
``POST /v1/explain``, so that limits, errors and answers agree. The list of served models
(``GET /v1/models``) and liveness (``GET /``) are answered in :mod:`saliency.api.views`.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import replace
from typing import Any

from flask import Blueprint, Response, jsonify, request
from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import MethodNotAllowed

from saliency.api.errors import RequestError, UnsupportedMediaError
from saliency.api.parsing import PARAMETERS, check_parameters, explain_request
from saliency.api.service import to_json
from saliency.api.state import state
from saliency.api.views import explain_outcome
from saliency.errors import ImageError, UnknownModelError

bp = Blueprint("kserve", __name__)

#: ``parameters`` of ``:explain``: those of ``POST /v1/explain`` but the answer's format (always JSON)
#: and the model (named in the path).
EXPLAIN_PARAMETERS = tuple(p for p in PARAMETERS if p not in ("format", "model"))
PAYLOAD = '{"instances": [{"image": {"b64": "<base64 of the image file>"}}, ...], "parameters": {"method": ...}}'


@bp.get("/v1/models/<name>")
def model_ready(name: str) -> Response:
    """``{"name", "ready"}`` for the served model; 404 for any other name."""
    model, _, verb = name.rpartition(":")
    if verb in ("predict", "explain") and model == state().model.name:
        raise MethodNotAllowed(valid_methods=["POST"], description=f":{verb} takes POST with a JSON body: {PAYLOAD}")
    _served(name)
    return jsonify(name=name, ready=True)


@bp.post("/v1/models/<name>:predict")
def predict(name: str) -> Response:
    """``{"predictions": [...]}``: per instance, its five most likely classes (as in ``POST /v1/explain``)."""
    _served(name)
    images, parameters = _payload()
    if parameters:
        raise RequestError(f"predict takes no parameters (got {', '.join(map(repr, list(parameters)[:5]))}); "
                           "send them to :explain")
    req = replace(explain_request(MultiDict(), images, _names(images), state().settings), methods=())  # no maps
    body = to_json(explain_outcome(req), state().model)
    return jsonify(predictions=[result["predictions"] for result in body["results"]])


@bp.post("/v1/models/<name>:explain")
def explain(name: str) -> Response:
    """``{"predictions": [...], "explanations": [...]}``, one of each per instance, and the answer's
    ``model``, ``methods``, ``style``, ``convention``, ``warnings`` and ``timing`` as in ``POST /v1/explain``."""
    _served(name)
    images, parameters = _payload()
    values = _values(parameters)
    check_parameters(values, EXPLAIN_PARAMETERS)
    req = explain_request(values, images, _names(images), state().settings)
    body = to_json(explain_outcome(req), state().model)
    results = body.pop("results")
    return jsonify(predictions=[r["predictions"] for r in results],
                   explanations=[{k: v for k, v in r.items() if k not in ("name", "predictions")} for r in results],
                   **body)


def _served(name: str) -> None:
    served = state().model.name
    if name != served:
        raise UnknownModelError(f"this server serves the model {served!r}, not {name[:80]!r}; "
                                f"send requests to /v1/models/{served}")


def _payload() -> tuple[tuple[bytes, ...], dict[str, Any]]:
    """The decoded images of ``instances`` and the ``parameters`` object of a JSON body."""
    mimetype = request.mimetype or ""
    if mimetype not in ("", "application/json") and not mimetype.endswith("+json"):
        raise UnsupportedMediaError(f"cannot read instances from a {mimetype} body; send application/json: {PAYLOAD} "
                                    "(or post the image itself to /v1/explain)")
    try:
        body = json.loads(request.get_data(cache=False) or b"null")
    except (ValueError, RecursionError):
        raise RequestError(f"the body is not valid JSON; send {PAYLOAD}") from None
    if not isinstance(body, dict) or "instances" not in body:
        raise RequestError(f"no 'instances' in the body; send {PAYLOAD}")
    unknown = sorted(set(body) - {"instances", "parameters"})
    if unknown:
        raise RequestError(f"unknown field {', '.join(repr(k[:40]) for k in unknown[:5])} in the body; "
                           "it takes 'instances' and 'parameters'")
    instances, parameters = body["instances"], body.get("parameters") or {}
    if not isinstance(instances, list) or not instances:
        raise RequestError(f"'instances' must be a non-empty list of images; send {PAYLOAD}")
    limit = state().settings.max_images
    if len(instances) > limit:
        raise RequestError(f"{len(instances)} instances in one request; this server takes at most {limit}")
    if not isinstance(parameters, dict):
        raise RequestError("'parameters' must be an object, e.g. {\"method\": \"guided\", \"topk\": 3}")
    return tuple(_image(i, instance) for i, instance in enumerate(instances)), parameters


def _image(index: int, instance: Any) -> bytes:
    """The image bytes of one instance, ``{"image": {"b64": ...}}`` or ``{"b64": ...}``."""
    if isinstance(instance, dict) and set(instance) == {"image"}:
        instance = instance["image"]
    if not (isinstance(instance, dict) and set(instance) == {"b64"} and isinstance(instance["b64"], str)):
        raise RequestError(f"instance {index} is not an image; each instance is {{\"image\": {{\"b64\": "
                           "\"<base64 of the image file>\"}}")
    try:
        data = base64.b64decode("".join(instance["b64"].split()), validate=True)
    except (binascii.Error, ValueError):
        raise ImageError(f"instance {index}: 'b64' is not valid base64 (standard alphabet, with padding)") from None
    if not data:
        raise ImageError(f"instance {index}: 'b64' is empty; send the image file's bytes in base64")
    return data


def _names(images: tuple[bytes, ...]) -> tuple[str, ...]:
    return tuple(f"instance {i}" for i in range(len(images)))


def _values(parameters: dict[str, Any]) -> MultiDict:
    """``parameters`` as the strings a query string would carry (a list of methods: one value each)."""
    values: MultiDict = MultiDict()
    for name, value in parameters.items():
        items = value if name == "method" and isinstance(value, list) else [value]
        for item in items:
            if item is None:
                continue
            if isinstance(item, bool) or not isinstance(item, (str, int, float)):
                raise RequestError(f"parameter {name[:40]!r} must be a string or a number, got {json.dumps(item)[:60]}")
            values.add(name, str(item))
    return values
