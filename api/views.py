"""Routes: thin views that parse, call the library, and shape the response."""

from __future__ import annotations

import re
from pathlib import PurePath
from urllib.parse import quote

from flask import Blueprint, Response, current_app, jsonify, request

import saliency
from saliency.api.openapi import openapi_document
from saliency.api.parsing import ExplainRequest, parse_explain_request
from saliency.api.service import Outcome, run, to_json
from saliency.api.state import state
from saliency.models import LoadedModel, available_models
from saliency.pipeline import target_label
from saliency.render import STYLES, convention

bp = Blueprint("saliency", __name__)


@bp.get("/")
def index() -> Response:
    """The web page for a browser (it asks for HTML); ``{"status": "alive"}`` for other clients (KServe's liveness)."""
    if request.accept_mimetypes.best_match(["application/json", "text/html"]) == "text/html":
        response = current_app.send_static_file("index.html")
    else:
        response = jsonify(status="alive")
    response.vary.add("Accept")
    return response


@bp.post("/v1/explain")
def explain() -> Response:
    s = state()
    req = parse_explain_request(request, s.settings, s.model.name)
    outcome = explain_outcome(req)
    if req.format == "png":
        return _png_response(outcome, s.model)
    body = to_json(outcome, s.model)
    response = jsonify(body)
    response.headers["Server-Timing"] = _server_timing(body["timing"])
    return response


def explain_outcome(req: ExplainRequest) -> Outcome:
    """Explain a parsed request with the served model, through its worker's batcher: what every explain route calls."""
    s = state()
    return run(s.model, req, s.batcher, s.settings.max_pixels, s.settings.max_render_pixels)


@bp.get("/v1/models")
def models() -> Response:
    s = state()
    entries = [{"name": m.name, "description": m.description, "kind": m.kind, "input_size": m.input_size,
                "classes": m.num_classes, "weights_on_disk": m.available, "loaded": m.name == s.model.name}
               for m in available_models()]
    if not any(e["loaded"] for e in entries):  # an import-path model
        entries.insert(0, {"name": s.model.name, "description": s.model.description, "kind": "custom",
                           "input_size": s.model.preprocessing.crop, "classes": len(s.model.labels),
                           "weights_on_disk": True, "loaded": True})
    serving = {"name": s.model.name, "classes": len(s.model.labels), "input_size": s.model.preprocessing.crop,
               "weights": _file_names_only(s.model.weights)}
    return jsonify(models=[s.model.name], serving=serving, catalog=entries)  # models: KServe's list of served names


@bp.get("/v1/methods")
def methods() -> Response:
    s = state()
    offered = [saliency.REGISTRY[name] for name in s.settings.methods]
    return jsonify(
        default=s.settings.default_method,
        methods=[{"name": m.name, "title": m.title, "summary": m.summary, "citation": m.citation,
                  "needs_relu": m.needs_relu, "needs_layer": m.needs_layer, "options": dict(m.options)}
                 for m in offered],
        styles=[{"name": style, "convention": convention(style)} for style in STYLES])


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> Response:
    s = state()
    ready = s.model is not None
    response = jsonify(status="ready" if ready else "loading", model=s.model.name if ready else None)
    response.status_code = 200 if ready else 503
    return response


@bp.get("/openapi.json")
def openapi() -> Response:
    return jsonify(openapi_document(state().settings))


@bp.get("/metrics")
def metrics() -> Response:
    return state().metrics.exposition()


def _png_response(outcome: Outcome, model: LoadedModel) -> Response:
    picture = outcome.pictures[0]
    is_class = isinstance(picture.target, int)  # else a unit, at its place: no probability
    probability = float(outcome.probabilities[0][picture.target]) if is_class else None
    label = target_label(picture.target, model.labels)
    response = Response(picture.png, mimetype="image/png")
    timing = outcome.timer.report()
    response.headers.update({
        "X-Saliency-Model": quote(model.name, safe=""),
        "X-Saliency-Method": picture.method,
        "X-Saliency-Target": str(picture.target),
        "X-Saliency-Label": quote(label, safe=" "),
        "X-Saliency-Probability": f"{probability:.6f}" if is_class else "",
        "X-Saliency-Style": outcome.request.style,
        "X-Saliency-Convention": quote(convention(outcome.request.style, alpha=outcome.request.alpha),
                                       safe=" ,;:()/=[]+-.'"),
        "Server-Timing": _server_timing(timing),
    })
    if probability is None:
        del response.headers["X-Saliency-Probability"]
    if outcome.warnings:
        response.headers["X-Saliency-Warnings"] = quote(" | ".join(outcome.warnings), safe=" ,;:()/='")
    return response


def _file_names_only(text: str) -> str:
    """``file '/srv/models/net.pt'`` → ``file 'net.pt'``: where files lie on the server is not shown."""
    return re.sub(r"'([^']*)'", lambda m: "'" + PurePath(m.group(1)).name + "'", text)


def _server_timing(timing: dict) -> str:
    return ", ".join(f"{name};dur={seconds * 1000:.2f}" for name, seconds in timing.items()
                     if isinstance(seconds, float))
