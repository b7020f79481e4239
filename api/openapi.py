"""The OpenAPI 3 document of the service, built from the method registry and render styles."""

from __future__ import annotations

from typing import Any

import saliency
from saliency.api.config import Settings
from saliency.api.parsing import FORMATS, OPTIONS, RAW_FORMATS
from saliency.render import STYLES

ERROR = {"$ref": "#/components/responses/Error"}


def _object(properties: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": "object", "required": list(properties), "properties": properties, **extra}


NUMBER, STRING, INTEGER = {"type": "number"}, {"type": "string"}, {"type": "integer"}
CLASS = _object({"index": INTEGER, "label": STRING, "probability": {"type": "number", "minimum": 0, "maximum": 1}})
UNIT = _object({"unit": {**STRING, "description": "LAYER:CHANNEL or LAYER:CHANNEL@ROW,COL (@max at its place)"},
                "label": STRING, "layer": STRING, "channel": INTEGER,
                "position": {"type": ["array", "null"], "items": INTEGER, "minItems": 2, "maxItems": 2},
                "value": {**NUMBER, "description": "The unit's value in this image."}})
ERROR_SCHEMA = _object({"error": {**STRING, "description": "A short code, e.g. unknown_method."},
                        "detail": {**STRING, "description": "What went wrong and what to do."}},
                       additionalProperties=False)
#: The JSON answer of ``POST /v1/explain`` (a test validates real answers against it).
EXPLANATION_SCHEMA = _object({
    "model": STRING,
    "methods": {"type": "array", "items": STRING},
    "style": STRING,
    "convention": {**STRING, "description": "How the pictures were drawn from the raw maps."},
    "attribution": {**STRING, "description": "What the raw maps are."},
    "results": {"type": "array", "description": "One entry per image, in upload order.", "items": _object({
        "name": STRING, "width": INTEGER, "height": INTEGER,
        "box": {"type": "array", "items": INTEGER, "minItems": 4, "maxItems": 4,
                "description": "left, top, right, bottom: the region of the image the model saw"},
        "predictions": {"type": "array", "items": CLASS, "maxItems": 5},
        "explanations": {"type": "array", "description": "One entry per explained class.", "items": _object({
            "target": {"oneOf": [CLASS, UNIT]},
            "maps": {"type": "object", "description": "Per method: the picture, and the raw map if asked.",
                     "additionalProperties": {
                         "type": "object", "required": ["png"],
                         "properties": {"png": {**STRING, "description": "data:image/png;base64,..."},
                                        "npy": {**STRING, "description": "base64 .npy, float32"}}}},
        })},
    })},
    "warnings": {"type": "array", "items": STRING},
    "activations": {"type": "object", "additionalProperties": INTEGER},
    "timing": {"type": "object", "description": "Seconds per stage (queue: the wait for the model; explain: the "
                                               "model call this request shared with batch_images images); overhead: "
                                               "decode + preprocess + render + encode, overhead_cpu: their CPU time; "
                                               "methods: per method.",
               "required": ["decode", "preprocess", "explain", "render", "encode", "overhead", "overhead_cpu", "total"],
               "additionalProperties": True},
})


_RESULT = EXPLANATION_SCHEMA["properties"]["results"]["items"]["properties"]
_INSTANCES = {"type": "array", "minItems": 1, "description": "The images, one per instance.", "items": {"oneOf": [
    _object({"image": _object({"b64": {**STRING, "description": "base64 of the image file"}})}),
    _object({"b64": {**STRING, "description": "base64 of the image file"}})]}}
#: KServe V1 answers (a test validates real answers against them).
PREDICTIONS_SCHEMA = _object({"predictions": {"type": "array", "description": "Per instance: its five most "
                                              "likely classes.", "items": _RESULT["predictions"]}})
KSERVE_EXPLANATION_SCHEMA = _object({
    "predictions": PREDICTIONS_SCHEMA["properties"]["predictions"],
    "explanations": {"type": "array", "description": "Per instance: its entry of `results` in POST /v1/explain, "
                                                     "without name and predictions.",
                     "items": _object({k: v for k, v in _RESULT.items() if k not in ("name", "predictions")})},
    **{k: v for k, v in EXPLANATION_SCHEMA["properties"].items() if k != "results"},
})


def openapi_document(settings: Settings) -> dict[str, Any]:
    """OpenAPI 3.1 description of every route; a test checks it against the app's URL map."""
    methods = list(settings.methods)
    return {
        "openapi": "3.1.0",
        "info": {"title": "saliency", "version": saliency.__version__,
                 "description": "Saliency maps (vanilla gradient, DeconvNet, guided backpropagation) "
                                "for a PyTorch image classifier."},
        "paths": {
            "/": {"get": {"summary": "The web page for a browser (Accept: text/html); for other clients liveness, "
                                     "{\"status\": \"alive\"} (KServe V1).",
                          "responses": {"200": {"description": "OK", "content": {
                              "text/html": {"schema": STRING},
                              "application/json": {"schema": _object({"status": {"const": "alive"}})}}}}}},
            "/static/{filename}": {"get": {
                "summary": "Files the web page loads (script, style sheet).",
                "parameters": [{"name": "filename", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "The file."}, "404": ERROR}}},
            "/v1/explain": {"post": _explain(methods, settings)},
            "/v1/models": {"get": _simple("models: the served model's name (KServe V1's list); serving: its "
                                          "details; catalog: every model this installation knows.")},
            "/v1/models/{name}": {"get": {
                "summary": "KServe V1 model readiness: {\"name\", \"ready\"}.", "parameters": [_NAME],
                "responses": {"200": {"description": "The served model.", "content": {"application/json": {
                    "schema": _object({"name": STRING, "ready": {"type": "boolean"}})}}}, "404": ERROR}}},
            "/v1/models/{name}:predict": {"post": _kserve(
                "KServe V1 predict: each instance's five most likely classes.", "KServePredictions", {})},
            "/v1/models/{name}:explain": {"post": _kserve(
                "KServe V1 explain: each instance's predictions and its maps, as POST /v1/explain computes them.",
                "KServeExplanation", _parameters(methods, settings))},
            "/v1/methods": {"get": _simple("Saliency methods offered, with citations, and render styles.")},
            "/healthz": {"get": _simple("Liveness: the process answers.")},
            "/readyz": {"get": {**_simple("Readiness: the model is loaded."), "responses": {
                "200": {"description": "Ready.", "content": {"application/json": {"schema": {"type": "object"}}}},
                "503": {"description": "The model is not loaded yet."}}}},
            "/openapi.json": {"get": _simple("This document.")},
            "/metrics": {"get": _simple("Prometheus metrics.", "text/plain")},
        },
        "components": {
            "schemas": {"Error": ERROR_SCHEMA, "Explanation": EXPLANATION_SCHEMA,
                        "KServePredictions": PREDICTIONS_SCHEMA, "KServeExplanation": KSERVE_EXPLANATION_SCHEMA},
            "responses": {"Error": {"description": "A request the server cannot serve.",
                                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}},
        },
    }


def _simple(summary: str, media: str = "application/json") -> dict[str, Any]:
    schema = {"type": "object"} if media == "application/json" else {"type": "string"}
    return {"summary": summary, "responses": {"200": {"description": "OK", "content": {media: {"schema": schema}}}}}


_NAME = {"name": "name", "in": "path", "required": True, "schema": STRING, "description": "The served model."}


def _kserve(summary: str, answer: str, parameters: dict[str, Any]) -> dict[str, Any]:
    body = {"type": "object", "required": ["instances"], "additionalProperties": False,
            "properties": {"instances": _INSTANCES}}
    if parameters:
        body["properties"]["parameters"] = {"type": "object", "additionalProperties": False, "properties": parameters,
                                            "description": "As the query parameters of POST /v1/explain."}
    return {"summary": summary, "parameters": [_NAME],
            "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
            "responses": {"200": {"description": "The answer.", "content": {"application/json": {
                "schema": {"$ref": f"#/components/schemas/{answer}"}}}},
                          "400": ERROR, "404": ERROR, "413": ERROR, "415": ERROR, "422": ERROR}}


def _parameters(methods: list[str], settings: Settings) -> dict[str, Any]:
    """The ``parameters`` of KServe's explain: those of ``POST /v1/explain`` as JSON values, one method or a list."""
    query = {p["name"]: {**p["schema"], "description": p["description"]}
             for p in _explain(methods, settings)["parameters"] if p["name"] not in ("format", "model")}
    method, target = query["method"], query["target"]
    query["method"] = {"oneOf": [method["items"], method], "description": method["description"]}
    query["target"] = {"type": ["string", "integer"], "description": target["description"]}
    return query


def _options() -> dict[str, tuple[Any, list[str]]]:
    """Each method option: its default and the methods that take it."""
    found: dict[str, tuple[Any, list[str]]] = {}
    for name in OPTIONS:
        users = [m.name for m in saliency.REGISTRY.values() if name in m.options]
        found[name] = (saliency.REGISTRY[users[0]].options[name], users)
    return found


def _schema(default: Any) -> dict[str, str]:
    kind = {bool: "boolean", int: "integer", float: "number"}.get(type(default), "string")
    return {"type": kind}


def _explain(methods: list[str], settings: Settings) -> dict[str, Any]:
    def query(name: str, schema: dict, description: str) -> dict[str, Any]:
        return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}

    return {
        "summary": "Explain one image, or several as one batch.",
        "description": "Send the image as multipart field `image` (repeat it for a batch) or as the raw body "
                       "with an image/* Content-Type. Parameters go in the query string or the form.",
        "parameters": [
            query("method", {"type": "array", "items": {"type": "string", "enum": methods + ["all"]}},
                  f"One or several methods (repeat or comma-separate), or 'all'. Default: {settings.default_method}."),
            query("target", {"type": "string"},
                  "Class to explain: an index or a label; or a unit of a layer, LAYER:CHANNEL (the channel's "
                  "sum), LAYER:CHANNEL@ROW,COL or LAYER:CHANNEL@max (its strongest position in each image). "
                  "Default: each image's top class."),
            query("topk", {"type": "integer", "minimum": 1, "maximum": settings.max_topk},
                  "Explain each image's k most likely classes (instead of target)."),
            query("style", {"type": "string", "enum": list(STYLES)}, "How maps are drawn."),
            query("format", {"type": "string", "enum": list(FORMATS)},
                  "json (default) or png (one image, one method, one class; prediction in X-Saliency-* headers)."),
            query("raw", {"type": "string", "enum": list(RAW_FORMATS)}, "npy: also return each raw map as base64 .npy (float32)."),
            query("alpha", {"type": "number", "minimum": 0, "maximum": 1}, "Heatmap weight of the overlay style."),
            query("model", {"type": "string"}, "Must name the served model, if given."),
            *[query(name, _schema(default), f"Option of {', '.join(users)} (default {default!r}).")
              for name, (default, users) in _options().items()],
        ],
        "requestBody": {"required": True, "content": {
            "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {
                "image": {"type": "array", "items": {"type": "string", "format": "binary"}}}}},
            "image/*": {"schema": {"type": "string", "format": "binary"}}}},
        "responses": {
            "200": {"description": "The explanation.", "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/Explanation"}},
                "image/png": {"schema": {"type": "string", "format": "binary"}}}},
            "400": ERROR, "404": ERROR, "413": ERROR, "415": ERROR, "422": ERROR,
        },
    }
