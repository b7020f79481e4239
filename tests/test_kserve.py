"""KServe's V1 data plane: the routes through Flask's test client, and KServe's own client against a real server."""

from __future__ import annotations

import asyncio
import base64
import io
import sys

import httpx
import kserve
import numpy as np
import pytest
from PIL import Image

from saliency.api import create_app
from servers import free_port, running_server
from tests.test_api import decode_npy as npy

BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"


def png(size=(48, 40), seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def instance(data: bytes) -> dict:
    return {"image": {"b64": base64.b64encode(data).decode("ascii")}}


def explain_v1(client, data: bytes, query: str) -> dict:
    response = client.post(f"/v1/explain?{query}", data=data, content_type="image/png")
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def assert_same_predictions(got: list[dict], want: list[dict]) -> None:
    """The same classes in the same order, probabilities equal up to float rounding (batched or not)."""
    assert [(p["index"], p["label"]) for p in got] == [(p["index"], p["label"]) for p in want]
    assert [p["probability"] for p in got] == pytest.approx([p["probability"] for p in want], abs=2e-6)


def assert_error(response, status: int, code: str) -> str:
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert set(body) == {"error", "detail"} and body["error"] == code and body["detail"]
    return body["detail"]


# --- the routes ---------------------------------------------------------------------------------

def test_model_ready_and_the_list_of_served_models(client):
    assert client.get("/v1/models/demo").get_json() == {"name": "demo", "ready": True}
    assert_error(client.get("/v1/models/resnet9000"), 404, "unknown_model")
    body = client.get("/v1/models").get_json()
    assert body["models"] == ["demo"]  # KServe's list of served names
    assert body["serving"]["name"] == "demo" and any(entry["name"] == "resnet50" for entry in body["catalog"])


def test_liveness_is_json_for_clients_and_the_page_for_browsers(client):
    for headers in ({}, {"Accept": "*/*"}, {"Accept": "application/json"}):
        response = client.get("/", headers=headers)
        assert response.status_code == 200 and response.get_json() == {"status": "alive"}, headers
        assert "Accept" in response.headers["Vary"]
    page = client.get("/", headers={"Accept": BROWSER_ACCEPT})
    assert page.mimetype == "text/html" and b"<script src=\"static/app.js\">" in page.data
    assert "Accept" in page.headers["Vary"]


def test_predict_answers_the_predictions_of_v1_explain(client):
    images = [png(seed=1), png((30, 60), seed=2)]
    response = client.post("/v1/models/demo:predict", json={"instances": [instance(d) for d in images]})
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert list(body) == ["predictions"] and len(body["predictions"]) == 2
    for data, predictions in zip(images, body["predictions"]):
        assert_same_predictions(predictions, explain_v1(client, data, "method=vanilla")["results"][0]["predictions"])


def test_explain_carries_the_maps_of_v1_explain(client):
    data = png(seed=3)
    parameters = {"method": ["vanilla", "smoothgrad"], "topk": 2, "raw": "npy", "samples": 3, "seed": 4,
                  "style": "overlay"}
    instances = [instance(data), instance(data)["image"]]  # {"image": {"b64": ...}} and {"b64": ...}
    response = client.post("/v1/models/demo:explain", json={"instances": instances, "parameters": parameters})
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    reference = explain_v1(client, data, "method=vanilla,smoothgrad&topk=2&raw=npy&samples=3&seed=4&style=overlay")
    expected = reference["results"][0]
    assert (body["model"], body["methods"], body["style"]) == ("demo", ["vanilla", "smoothgrad"], "overlay")
    assert body["convention"] == reference["convention"]
    assert len(body["predictions"]) == len(body["explanations"]) == 2
    for predictions, explanation in zip(body["predictions"], body["explanations"]):
        assert predictions == expected["predictions"]
        assert (explanation["width"], explanation["height"], explanation["box"]) == \
               (expected["width"], expected["height"], expected["box"])
        assert [e["target"] for e in explanation["explanations"]] == [e["target"] for e in expected["explanations"]]
        for got, want in zip(explanation["explanations"], expected["explanations"]):
            assert list(got["maps"]) == ["vanilla", "smoothgrad"]
            for method in got["maps"]:
                np.testing.assert_allclose(npy(got["maps"][method]["npy"]), npy(want["maps"][method]["npy"]),
                                           rtol=1e-4, atol=1e-6)
                assert got["maps"][method]["png"].startswith("data:image/png;base64,")


def test_explain_target_by_label_and_the_default_method(app, client):
    labels = app.extensions["saliency"].model.labels
    body = client.post("/v1/models/demo:explain",
                       json={"instances": [instance(png())], "parameters": {"target": labels[2]}}).get_json()
    assert body["methods"] == ["guided"]
    (explained,) = body["explanations"][0]["explanations"]
    assert explained["target"]["index"] == 2 and "npy" not in explained["maps"]["guided"]
    by_index = client.post("/v1/models/demo:explain",
                           json={"instances": [instance(png())], "parameters": {"target": 2}}).get_json()
    assert by_index["explanations"][0]["explanations"][0]["target"]["index"] == 2


def test_explain_is_counted_like_v1_explain():
    app = create_app({"TESTING": True, "model": "demo"})
    client = app.test_client()
    client.post("/v1/models/demo:explain", json={"instances": [instance(png())], "parameters": {"method": "vanilla"}})
    client.post("/v1/models/demo:explain", json={"instances": [{"b64": "%%%"}]})
    text = client.get("/metrics").get_data(as_text=True)
    assert 'saliency_explain_method_seconds_count{method="vanilla"} 1.0' in text
    assert 'saliency_images_explained_total 1.0' in text
    assert 'saliency_http_errors_total{error="invalid_image",route="/v1/models/<name>:explain"} 1.0' in text


def test_answers_match_the_documented_schemas(client):
    from openapi_schema_validator import OAS31Validator

    from saliency.api.kserve import EXPLAIN_PARAMETERS

    document = client.get("/openapi.json").get_json()
    schemas = document["components"]["schemas"]
    payload = {"instances": [instance(png())]}
    OAS31Validator(schemas["KServePredictions"]).validate(client.post("/v1/models/demo:predict", json=payload).get_json())
    for parameters in ({"method": "all", "topk": 2, "raw": "npy"}, {"method": ["gradcam"], "style": "overlay"}):
        answer = client.post("/v1/models/demo:explain", json={**payload, "parameters": parameters}).get_json()
        OAS31Validator(schemas["KServeExplanation"]).validate(answer)
    explain = document["paths"]["/v1/models/{name}:explain"]["post"]
    body = explain["requestBody"]["content"]["application/json"]["schema"]
    assert set(body["properties"]["parameters"]["properties"]) == set(EXPLAIN_PARAMETERS)
    OAS31Validator(body).validate({**payload, "parameters": {"method": ["vanilla"], "target": 2}})


BAD_PAYLOADS = {
    "no instances": ({"parameters": {}}, 400, "bad_request"),
    "inputs instead of instances": ({"inputs": [instance(png())]}, 400, "bad_request"),
    "empty instances": ({"instances": []}, 400, "bad_request"),
    "instances not a list": ({"instances": instance(png())}, 400, "bad_request"),
    "instance a bare string": ({"instances": [base64.b64encode(png()).decode()]}, 400, "bad_request"),
    "instance with another key": ({"instances": [{"image": {"bytes": "AAAA"}}]}, 400, "bad_request"),
    "b64 not base64": ({"instances": [{"image": {"b64": "not base64!"}}]}, 400, "invalid_image"),
    "b64 empty": ({"instances": [{"image": {"b64": ""}}]}, 400, "invalid_image"),
    "not an image": ({"instances": [instance(b"plain text, no picture" * 10)]}, 400, "invalid_image"),
    "truncated image": ({"instances": [instance(png((200, 200))[:300])]}, 400, "invalid_image"),
    "unknown field": ({"instances": [instance(png())], "signature_name": "serving_default"}, 400, "bad_request"),
    "parameters not an object": ({"instances": [instance(png())], "parameters": ["guided"]}, 400, "bad_request"),
    "unknown method": ({"instances": [instance(png())], "parameters": {"method": "lime"}}, 400, "unknown_method"),
    "one unknown method in a list": ({"instances": [instance(png())], "parameters": {"method": ["vanilla", "x"]}},
                                     400, "unknown_method"),
    "target out of range": ({"instances": [instance(png())], "parameters": {"target": 100000}}, 400, "invalid_target"),
    "unknown label": ({"instances": [instance(png())], "parameters": {"target": "zebra"}}, 400, "invalid_target"),
    "target and topk": ({"instances": [instance(png())], "parameters": {"target": 1, "topk": 2}}, 400, "bad_request"),
    "topk zero": ({"instances": [instance(png())], "parameters": {"topk": 0}}, 400, "bad_request"),
    "bad style": ({"instances": [instance(png())], "parameters": {"style": "neon"}}, 400, "bad_request"),
    "format png": ({"instances": [instance(png())], "parameters": {"format": "png"}}, 400, "bad_request"),
    "model parameter": ({"instances": [instance(png())], "parameters": {"model": "demo"}}, 400, "bad_request"),
    "unknown parameter": ({"instances": [instance(png())], "parameters": {"methods": "guided"}}, 400, "bad_request"),
    "boolean parameter": ({"instances": [instance(png())], "parameters": {"raw": True}}, 400, "bad_request"),
    "nested parameter": ({"instances": [instance(png())], "parameters": {"target": {"index": 1}}}, 400, "bad_request"),
    "option of another method": ({"instances": [instance(png())], "parameters": {"method": "vanilla", "samples": 4}},
                                 400, "invalid_option"),
    "option too costly": ({"instances": [instance(png())], "parameters": {"method": "smoothgrad", "samples": 10**6}},
                          400, "bad_request"),
    "alpha nan": ({"instances": [instance(png())], "parameters": {"alpha": float("nan")}}, 400, "bad_request"),
    "too many instances": ({"instances": [instance(png((8, 8)))] * 17}, 400, "bad_request"),
}


@pytest.mark.parametrize("case", sorted(BAD_PAYLOADS))
def test_bad_payloads_are_4xx_json(client, case):
    payload, status, code = BAD_PAYLOADS[case]
    assert_error(client.post("/v1/models/demo:explain", json=payload), status, code)
    if "parameters" not in payload:  # predict reads instances the same way
        assert_error(client.post("/v1/models/demo:predict", json=payload), status, code)


def test_bad_bodies_and_verbs(client):
    detail = assert_error(client.post("/v1/models/demo:explain", data=b"{not json", content_type="application/json"),
                          400, "bad_request")
    assert "instances" in detail
    assert_error(client.post("/v1/models/demo:explain", data=b"[" * 100_000, content_type="application/json"),
                 400, "bad_request")
    assert_error(client.post("/v1/models/demo:explain", data=png(), content_type="image/png"),
                 415, "unsupported_media_type")
    assert_error(client.post("/v1/models/demo:predict"), 400, "bad_request")
    assert_error(client.post("/v1/models/demo:predict", json={"instances": [instance(png())],
                                                               "parameters": {"method": "guided"}}), 400, "bad_request")
    assert_error(client.post("/v1/models/resnet9000:predict", json={"instances": [instance(png())]}),
                 404, "unknown_model")
    response = client.get("/v1/models/demo:explain")
    assert_error(response, 405, "method_not_allowed")
    assert response.headers["Allow"] == "POST"


def test_a_body_over_the_upload_limit_is_413():
    client = create_app({"TESTING": True, "model": "demo", "max_upload_mb": 0.05}).test_client()
    big = {"instances": [instance(png((200, 200)))]}  # ~160 kB of base64
    assert_error(client.post("/v1/models/demo:explain", json=big), 413, "request_entity_too_large")


# --- KServe's own client against a real server ---------------------------------------------------

@pytest.fixture(scope="module")
def live_server(tmp_path_factory):
    port = free_port()
    command = [sys.executable, "-c",
               f"from saliency.api import serve; serve('127.0.0.1', {port}, workers=1, threads=2, model='demo')"]
    with running_server(command, port, tmp_path_factory.mktemp("kserve") / "server.log") as url:
        yield url


def test_kserve_client_speaks_to_the_service(live_server):
    data = png(seed=5)

    async def session() -> tuple:
        async with kserve.InferenceRESTClient(kserve.RESTConfig(protocol="v1", timeout=120)) as client:
            live = await client.is_server_live(live_server)
            ready = await client.is_model_ready(live_server, "demo")
            predicted = await client.infer(live_server, {"instances": [instance(data)]}, model_name="demo")
            explained = await client.explain(live_server, "demo", {
                "instances": [instance(data)], "parameters": {"method": ["vanilla", "guided"], "raw": "npy"}})
            with pytest.raises(httpx.HTTPStatusError) as unknown:
                await client.is_model_ready(live_server, "resnet9000")
            with pytest.raises(httpx.HTTPStatusError) as bad:
                await client.explain(live_server, "demo", {"instances": [{"image": {"b64": "@@"}}]})
            return live, ready, predicted, explained, unknown.value, bad.value

    live, ready, predicted, explained, unknown, bad = asyncio.run(session())
    assert live is True and ready is True
    reference = httpx.post(f"{live_server}/v1/explain", params={"method": "vanilla,guided", "raw": "npy"},
                           files={"image": ("a.png", data, "image/png")}, timeout=120).json()["results"][0]
    assert predicted == {"predictions": [reference["predictions"]]}
    assert explained["predictions"] == [reference["predictions"]]
    maps = explained["explanations"][0]["explanations"][0]["maps"]
    for method in ("vanilla", "guided"):
        np.testing.assert_allclose(npy(maps[method]["npy"]),
                                   npy(reference["explanations"][0]["maps"][method]["npy"]), rtol=1e-4, atol=1e-6)
    assert unknown.response.status_code == 404 and "unknown_model" in str(unknown)
    assert bad.response.status_code == 400 and "invalid_image" in str(bad)
    page = httpx.get(live_server, headers={"Accept": BROWSER_ACCEPT}, timeout=30)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
