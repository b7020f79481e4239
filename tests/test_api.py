"""The HTTP API through Flask's test client: every route, every bad input, every odd-but-valid image."""

from __future__ import annotations

import base64
import io
import re
import struct
import tempfile
import time
import zlib

import flask
import numpy as np
import pytest
import werkzeug.formparser
import torch
from PIL import Image

import saliency
from saliency.api import create_app
from saliency.images import open_image


# --- images made on the spot --------------------------------------------------------------------

def picture(size=(96, 80), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")


def encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width × height`` pixels but holds (almost) no data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def exif_rotated_jpeg() -> bytes:
    """A 120×60 JPEG whose EXIF orientation (6) says: rotate 90° clockwise to display (60×120)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(picture((120, 60)), "JPEG", exif=exif.tobytes())


def animated_gif() -> bytes:
    frames = [picture((64, 64), seed=s).convert("P") for s in (1, 2, 3)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


ODD_BUT_VALID = {
    "cmyk.jpg": lambda: encode(picture().convert("CMYK"), "JPEG"),
    "16bit.png": lambda: encode(Image.fromarray((np.arange(80 * 96, dtype=np.uint16).reshape(80, 96) * 8)), "PNG"),
    "palette-alpha.png": lambda: encode(picture().convert("RGBA").quantize(16), "PNG", transparency=0),
    "rgba.png": lambda: encode(picture().convert("RGBA"), "PNG"),
    "gray.png": lambda: encode(picture().convert("L"), "PNG"),
    "animated.gif": animated_gif,
    "exif-rotated.jpg": exif_rotated_jpeg,
}


# --- fixtures and helpers -----------------------------------------------------------------------

def model_of(app):
    return app.extensions["saliency"].model


def post(client, data: bytes | list[bytes], query: str = "", name: str = "image.png"):
    items = data if isinstance(data, list) else [data]
    form = {"image": [(io.BytesIO(d), f"{i}-{name}") for i, d in enumerate(items)]}
    return client.post(f"/v1/explain{query}", data=form, content_type="multipart/form-data")


def decode_npy(text: str) -> np.ndarray:
    return np.load(io.BytesIO(base64.b64decode(text)), allow_pickle=False)


def decode_png(data_uri: str) -> Image.Image:
    assert data_uri.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(data_uri.split(",", 1)[1])))


def assert_error(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert set(body) == {"error", "detail"} and body["detail"]
    if code:
        assert body["error"] == code
    return body


# --- explain: the happy paths ------------------------------------------------------------------

def test_explain_json_matches_the_library(app, client):
    data = encode(picture())
    response = post(client, data, "?method=all&raw=npy")
    assert response.status_code == 200
    body = response.get_json()
    assert body["model"] == model_of(app).name
    assert body["methods"] == list(saliency.METHODS)
    (result,) = body["results"]
    assert (result["width"], result["height"]) == (96, 80)
    # what the library computes for the same picture
    model = model_of(app)
    prepared = model.prepare(open_image(data))
    expected = saliency.explain(model.module, prepared.tensor, methods="all")
    top = int(expected.targets[0])
    assert result["predictions"][0]["index"] == top
    assert result["predictions"][0]["label"] == model.labels[top]
    assert result["predictions"][0]["probability"] == pytest.approx(float(expected.probabilities[0, top]), abs=1e-5)
    probabilities = [p["probability"] for p in result["predictions"]]
    assert probabilities == sorted(probabilities, reverse=True) and len(probabilities) == min(5, len(model.labels))
    (explanation,) = result["explanations"]
    assert explanation["target"]["index"] == top
    for method in saliency.METHODS:
        raw = decode_npy(explanation["maps"][method]["npy"])
        assert raw.dtype == np.float32 and raw.shape == tuple(prepared.tensor.shape[1:])
        np.testing.assert_allclose(raw, expected[method][0].numpy(), rtol=1e-4, atol=1e-6)
        png = decode_png(explanation["maps"][method]["png"])
        left, top_, right, bottom = prepared.box
        assert png.size == (right - left, bottom - top_)
    assert body["convention"] and body["timing"]["explain"] > 0
    assert set(body["timing"]) >= {"decode", "preprocess", "explain", "render", "encode", "overhead", "total"}
    assert "Server-Timing" in response.headers


def test_methods_differ_where_the_rules_differ(client):
    body = post(client, encode(picture()), "?method=vanilla,guided&raw=npy").get_json()
    maps = body["results"][0]["explanations"][0]["maps"]
    assert list(maps) == ["vanilla", "guided"]
    assert not np.allclose(decode_npy(maps["vanilla"]["npy"]), decode_npy(maps["guided"]["npy"]))


def test_png_format_returns_the_picture_with_the_prediction_in_headers(app, client):
    response = post(client, encode(picture()), "?format=png&method=guided&style=overlay")
    assert response.status_code == 200 and response.mimetype == "image/png"
    image = Image.open(io.BytesIO(response.data))
    assert image.size == (96, 80)  # overlay: the whole original
    model = model_of(app)
    target = int(response.headers["X-Saliency-Target"])
    assert response.headers["X-Saliency-Label"] == model.labels[target]
    assert 0 < float(response.headers["X-Saliency-Probability"]) <= 1
    assert response.headers["X-Saliency-Method"] == "guided"
    assert response.headers["X-Saliency-Convention"]


def test_raw_image_body_is_accepted(client):
    data = encode(picture(), "JPEG")
    response = client.post("/v1/explain?method=vanilla", data=data, content_type="image/jpeg")
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["results"][0]["width"] == 96


def test_method_options_reach_the_library(app, client):
    data = encode(picture())
    body = post(client, data, "?method=smoothgrad&samples=3&noise=0.2&seed=5&raw=npy").get_json()
    model = model_of(app)
    x = model.prepare(open_image(data)).tensor
    expected = saliency.explain(model.module, x, methods="smoothgrad", options={"samples": 3, "noise": 0.2, "seed": 5})
    np.testing.assert_allclose(decode_npy(body["results"][0]["explanations"][0]["maps"]["smoothgrad"]["npy"]),
                               expected["smoothgrad"][0].numpy(), rtol=1e-4, atol=1e-6)


def test_target_by_index_and_by_label(app, client):
    model = model_of(app)
    data = encode(picture())
    by_index = post(client, data, "?target=2&raw=npy").get_json()
    by_label = post(client, data, f"?target={model.labels[2]}&raw=npy").get_json()
    for body in (by_index, by_label):
        assert body["results"][0]["explanations"][0]["target"]["index"] == 2
    np.testing.assert_array_equal(decode_npy(by_index["results"][0]["explanations"][0]["maps"]["guided"]["npy"]),
                                  decode_npy(by_label["results"][0]["explanations"][0]["maps"]["guided"]["npy"]))


def test_topk_explains_the_k_most_likely_classes(client):
    body = post(client, encode(picture()), "?topk=3&method=vanilla").get_json()
    result = body["results"][0]
    explained = [e["target"]["index"] for e in result["explanations"]]
    assert explained == [p["index"] for p in result["predictions"][:3]]


def test_several_images_are_one_batch_equal_to_single_requests(client):
    images = [encode(picture(seed=s)) for s in (1, 2)] + [encode(picture((50, 70), seed=3), "JPEG")]
    batch = post(client, images, "?method=guided&raw=npy").get_json()
    assert len(batch["results"]) == 3
    for data, result in zip(images, batch["results"]):
        single = post(client, data, "?method=guided&raw=npy").get_json()["results"][0]
        # the same classes; probabilities to float rounding (oneDNN picks other kernels for a batch of one)
        assert [(p["index"], p["label"]) for p in result["predictions"]] == \
            [(p["index"], p["label"]) for p in single["predictions"]]
        np.testing.assert_allclose([p["probability"] for p in result["predictions"]],
                                   [p["probability"] for p in single["predictions"]], atol=2e-6)
        np.testing.assert_allclose(decode_npy(result["explanations"][0]["maps"]["guided"]["npy"]),
                                   decode_npy(single["explanations"][0]["maps"]["guided"]["npy"]),
                                   rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("style", ["heatmap", "overlay", "rgb"])
def test_every_style_renders(client, style):
    body = post(client, encode(picture()), f"?style={style}").get_json()
    assert body["style"] == style
    mode = decode_png(body["results"][0]["explanations"][0]["maps"]["guided"]["png"]).mode
    assert mode == ("P" if style == "heatmap" else "RGB")  # the heatmap is a palette picture


@pytest.mark.parametrize("name", sorted(ODD_BUT_VALID))
def test_odd_but_valid_images_work(client, name):
    response = post(client, ODD_BUT_VALID[name](), name=name)
    assert response.status_code == 200, response.get_json()
    result = response.get_json()["results"][0]
    if name == "exif-rotated.jpg":
        assert (result["width"], result["height"]) == (60, 120)


def test_animated_gif_is_explained_by_its_first_frame(client):
    first = Image.open(io.BytesIO(animated_gif())).convert("RGB")
    from_gif = post(client, animated_gif(), "?raw=npy", name="a.gif").get_json()
    from_frame = post(client, encode(first), "?raw=npy").get_json()
    np.testing.assert_allclose(decode_npy(from_gif["results"][0]["explanations"][0]["maps"]["guided"]["npy"]),
                               decode_npy(from_frame["results"][0]["explanations"][0]["maps"]["guided"]["npy"]),
                               rtol=1e-4, atol=1e-6)


def test_uploads_are_never_written_to_disk(client, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("an upload was about to be written to disk")
    for name in ("TemporaryFile", "SpooledTemporaryFile", "NamedTemporaryFile", "mkstemp"):
        monkeypatch.setattr(tempfile, name, refuse)
        monkeypatch.setattr(werkzeug.formparser, name, refuse, raising=False)  # it imported them by name
    big = encode(picture((600, 400), seed=7))  # incompressible noise: > 500 kB, werkzeug's spill size
    assert len(big) > 600_000
    assert post(client, big, "?method=vanilla").status_code == 200
    with client.application.test_request_context(
            "/v1/explain", method="POST", content_type="multipart/form-data",
            data={"image": (io.BytesIO(big), "big.png")}):
        assert isinstance(flask.request.files["image"].stream, io.BytesIO)


# --- bad input: 4xx JSON, and the server keeps serving ------------------------------------------

BAD_FILES = {
    "empty": (b"", 400, "invalid_image"),
    "text named .png": (b"this is not a picture\n" * 20, 400, "invalid_image"),
    "truncated jpeg": (encode(picture((200, 200)), "JPEG")[:1500], 400, "invalid_image"),
    "decompression bomb": (png_header_only(30_000, 30_000), 400, "invalid_image"),
    "over our pixel limit": (png_header_only(8_000, 6_000), 400, "invalid_image"),
    "100000x1": (encode(Image.new("L", (100_000, 1))), 400, "invalid_image"),
    "random bytes": (np.random.default_rng(0).bytes(4000), 400, "invalid_image"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_files_are_4xx_json(client, case):
    data, status, code = BAD_FILES[case]
    assert_error(post(client, data), status, code)
    assert post(client, encode(picture()), "?method=vanilla").status_code == 200  # still serving


BAD_REQUESTS = {
    "unknown method": ("?method=lime", 400, "unknown_method"),
    "one unknown method among good ones": ("?method=vanilla,nope", 400, "unknown_method"),
    "unknown model": ("?model=resnet9000", 404, "unknown_model"),
    "target out of range": ("?target=100000", 400, "invalid_target"),
    "negative target": ("?target=-1", 400, "invalid_target"),
    "unknown label": ("?target=zebra-crossing", 400, "invalid_target"),
    "bad format": ("?format=gif", 400, "bad_request"),
    "bad style": ("?style=neon", 400, "bad_request"),
    "bad raw": ("?raw=csv", 400, "bad_request"),
    "bad topk": ("?topk=many", 400, "bad_request"),
    "topk zero": ("?topk=0", 400, "bad_request"),
    "topk and target": ("?topk=2&target=1", 400, "bad_request"),
    "alpha out of range": ("?alpha=2&style=overlay", 400, "bad_request"),
    "alpha not a number": ("?alpha=half&style=overlay", 400, "bad_request"),
    "alpha nan": ("?alpha=nan&style=overlay", 400, "bad_request"),
    "topk fractional": ("?topk=1.5", 400, "bad_request"),
    "unknown parameter": ("?methods=guided", 400, "bad_request"),
    "repeated format": ("?format=png&format=json", 400, "bad_request"),
    "png with two methods": ("?format=png&method=vanilla,guided", 400, "bad_request"),
    "png with topk": ("?format=png&topk=2", 400, "bad_request"),
    "png with raw maps": ("?format=png&raw=npy", 400, "bad_request"),  # was silently left out
    "option of another method": ("?method=vanilla&samples=4", 400, "invalid_option"),
    "option of the wrong type": ("?method=smoothgrad&samples=few", 400, "invalid_option"),
    "option too costly": ("?method=smoothgrad&samples=100000", 400, "bad_request"),
    "unknown layer": ("?method=gradcam&layer=no.such.layer", 400, None),
    "infinite option": ("?method=integrated_gradients&baseline=inf", 400, "bad_request"),
    "target index of 5000 digits": ("?target=" + "9" * 5000, 400, "invalid_target"),
    "seed beyond 64 bits": ("?method=smoothgrad&seed=99999999999999999999999", 400, "invalid_option"),
    "gradcam layer without a feature map": ("?method=gradcam&layer=classifier", 400, "invalid_option"),
    "guided gradcam layer without a feature map": ("?method=guided_gradcam&layer=classifier", 400, "invalid_option"),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_parameters_are_4xx_json(client, case):
    query, status, code = BAD_REQUESTS[case]
    assert_error(post(client, encode(picture()), query), status, code)


def test_missing_image_field(client):
    response = client.post("/v1/explain", data={"picture": (io.BytesIO(encode(picture())), "a.png")},
                           content_type="multipart/form-data")
    assert "'image'" in assert_error(response, 400, "bad_request")["detail"]
    assert_error(client.post("/v1/explain"), 400, "bad_request")


def test_image_sent_as_text_not_a_file_says_to_attach_the_file(client):
    # curl -F image=photo.jpg (without the @) sends the file name as text
    response = client.post("/v1/explain", data={"image": "photo.jpg"}, content_type="multipart/form-data")
    detail = assert_error(response, 400, "bad_request")["detail"]
    assert "unknown parameter" not in detail and "image=@" in detail


def test_png_with_two_images_is_refused(client):
    assert_error(post(client, [encode(picture()), encode(picture())], "?format=png"), 400, "bad_request")


def test_empty_raw_body_and_wrong_content_type(client):
    assert_error(client.post("/v1/explain", data=b"", content_type="image/png"), 400, "invalid_image")
    assert_error(client.post("/v1/explain", data=b'{"image": 1}', content_type="application/json"),
                 415, "unsupported_media_type")


def test_a_request_costing_too_many_passes_is_refused(client):
    images = [encode(picture((16, 16), seed=s)) for s in range(3)]
    body = assert_error(post(client, images, "?method=smoothgrad,integrated_gradients&samples=64&steps=64&topk=3"),
                        400, "bad_request")
    assert "1152 backward passes" in body["detail"]


def test_a_request_drawing_too_many_pixels_is_refused_before_rendering():
    # a small upload of a large picture, many classes and methods: the pictures, drawn at the image's size,
    # would cost minutes and hundreds of MB (a 6000 x 6600 PNG of 130 kB: 40 maps, 100 s, a 460 MB answer)
    small = create_app({"TESTING": True, "model": "demo", "max_render_pixels": 100_000})
    client = small.test_client()
    big = encode(Image.new("RGB", (400, 300), "white"))
    body = assert_error(post(client, big, "?method=vanilla,guided&topk=2"), 400, "bad_request")
    assert "361200 pixels" in body["detail"] and "at most 100000" in body["detail"]  # 4 maps of the 301 x 300 crop
    assert_error(post(client, big, "?method=vanilla&style=overlay&format=png"), 400, "bad_request")  # 400 x 300
    assert post(client, big, "?method=vanilla&format=png").status_code == 200  # the 300 x 300 crop: 90000


def test_too_many_images(client, app):
    limit = app.extensions["saliency"].settings.max_images
    assert_error(post(client, [encode(picture((8, 8)))] * (limit + 1)), 400, "bad_request")


def test_oversize_upload_is_413():
    small = create_app({"TESTING": True, "model": "demo", "max_upload_mb": 0.05})
    client = small.test_client()
    big = encode(picture((200, 200)))  # ~120 kB of noise
    body = assert_error(post(client, big), 413, "request_entity_too_large")
    assert "0.05 MB" in body["detail"]
    assert_error(client.post("/v1/explain", data=big, content_type="image/png"), 413)
    assert post(client, encode(picture((20, 20))), "?method=vanilla").status_code == 200


def test_wrong_http_method_and_unknown_route_are_json(client):
    response = client.get("/v1/explain")
    assert_error(response, 405, "method_not_allowed")
    assert "POST" in response.headers["Allow"]
    assert_error(client.get("/v1/nothing-here"), 404, "not_found")


def test_an_unexpected_failure_is_a_json_500_without_internals():
    app = create_app({"TESTING": False, "model": "demo"})

    @app.get("/boom")
    def boom():
        raise RuntimeError("secret internals")

    response = app.test_client().get("/boom")
    body = assert_error(response, 500, "internal_error")
    assert "secret" not in body["detail"]


def test_methods_can_be_restricted_by_configuration():
    app = create_app({"TESTING": True, "model": "demo", "methods": "vanilla,guided"})
    client = app.test_client()
    assert [m["name"] for m in client.get("/v1/methods").get_json()["methods"]] == ["vanilla", "guided"]
    assert_error(post(client, encode(picture()), "?method=deconvnet"), 400, "unknown_method")
    assert post(client, encode(picture()), "?method=all").get_json()["methods"] == ["vanilla", "guided"]


def test_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("SALIENCY_MAX_UPLOAD_MB", "3")
    monkeypatch.setenv("SALIENCY_METHODS", "guided")
    app = create_app({"TESTING": True})
    settings = app.extensions["saliency"].settings
    assert settings.model == "demo" and settings.methods == ("guided",)
    assert app.config["MAX_CONTENT_LENGTH"] == 3 * 1024 * 1024
    monkeypatch.setenv("SALIENCY_MAX_UPLOAD_MB", "lots")
    with pytest.raises(ValueError, match="SALIENCY_MAX_UPLOAD_MB"):
        create_app()


# --- the other routes -----------------------------------------------------------------------------

def test_methods_route_reads_the_registry(client):
    body = client.get("/v1/methods").get_json()
    assert [m["name"] for m in body["methods"]] == list(saliency.METHODS)
    for entry in body["methods"]:
        method = saliency.REGISTRY[entry["name"]]
        assert (entry["title"], entry["citation"], entry["summary"]) == (method.title, method.citation, method.summary)
    assert body["default"] == "guided"
    assert {s["name"] for s in body["styles"]} == {"heatmap", "overlay", "rgb"}


def test_models_route(app, client):
    body = client.get("/v1/models").get_json()
    model = model_of(app)
    assert (body["serving"]["name"], body["serving"]["classes"]) == (model.name, len(model.labels))
    assert body["models"] == [model.name]  # the served names, as KServe lists them
    assert [m["name"] for m in body["catalog"] if m["loaded"]] == [model.name]
    names = [m["name"] for m in body["catalog"]]
    assert "demo" in names and "resnet50" in names  # from the one model registry


def test_health_and_readiness(client):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.get_json()["status"] == "ready"


def test_web_page_and_its_files(client):
    page = client.get("/", headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})  # as a browser asks
    assert page.status_code == 200 and b"<script src=\"static/app.js\">" in page.data
    for name in ("app.js", "style.css"):
        assert client.get(f"/static/{name}").status_code == 200


def test_metrics_count_requests_errors_and_method_latency():
    app = create_app({"TESTING": True, "model": "demo"})
    client = app.test_client()
    post(client, encode(picture()), "?method=vanilla,guided")
    post(client, b"not an image")
    text = client.get("/metrics").get_data(as_text=True)
    assert 'saliency_http_requests_total{route="/v1/explain",status="200"} 1.0' in text
    assert 'saliency_http_requests_total{route="/v1/explain",status="400"} 1.0' in text
    assert 'saliency_http_errors_total{error="invalid_image",route="/v1/explain"} 1.0' in text
    assert 'saliency_explain_method_seconds_count{method="guided"} 1.0' in text
    assert 'saliency_explain_method_seconds_count{method="deconvnet"}' not in text
    assert "saliency_http_request_seconds_bucket" in text
    assert client.get("/metrics").headers["Content-Type"].count("charset") == 1


def test_openapi_document_is_valid_and_matches_the_routes(app, client):
    from openapi_spec_validator import validate

    from saliency.api.parsing import PARAMETERS

    document = client.get("/openapi.json").get_json()
    validate(document)
    documented = {(path, verb.upper()) for path, item in document["paths"].items() for verb in item}
    routed = {(re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule), verb)
              for rule in app.url_map.iter_rules() for verb in rule.methods - {"HEAD", "OPTIONS"}}
    assert documented == routed
    explain = document["paths"]["/v1/explain"]["post"]
    assert {p["name"] for p in explain["parameters"]} == set(PARAMETERS)
    method_enum = explain["parameters"][0]["schema"]["items"]["enum"]
    assert method_enum == list(saliency.METHODS) + ["all"]


def test_answers_match_the_documented_schemas(client):
    from openapi_schema_validator import OAS31Validator

    schemas = client.get("/openapi.json").get_json()["components"]["schemas"]
    for query in ("?method=all&topk=2&raw=npy", "?method=gradcam&style=overlay"):
        OAS31Validator(schemas["Explanation"]).validate(post(client, encode(picture()), query).get_json())
    OAS31Validator(schemas["Error"]).validate(post(client, b"nope").get_json())


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF"])
def test_truncated_and_corrupted_files_of_every_format_are_never_a_500(client, fmt):
    whole = encode(picture((64, 48), seed=5), fmt)
    rng = np.random.default_rng(1)
    broken = [whole[:cut] for cut in (8, 40, len(whole) // 3, len(whole) - 10)]
    for _ in range(3):  # flipped bytes in the middle
        damaged = bytearray(whole)
        for i in rng.integers(16, len(whole), 20):
            damaged[i] ^= 0xFF
        broken.append(bytes(damaged))
    for data in broken:
        response = client.post("/v1/explain?method=vanilla", data=data, content_type=f"image/{fmt.lower()}")
        assert response.status_code in (200, 400), (fmt, len(data), response.get_data(as_text=True))
        if response.status_code == 400:
            assert response.get_json()["error"] == "invalid_image"


def _spin(cpu_seconds: float) -> None:
    end = time.thread_time() + cpu_seconds
    while time.thread_time() < end:
        pass


def test_timer_adds_wall_time_per_stage_and_counts_cpu_time_in_overhead_stages_only():
    from saliency.api.service import Timer

    timer = Timer()
    with timer.stage("decode"):
        _spin(0.05)
    with timer.stage("explain"):
        _spin(0.05)
    with pytest.raises(ValueError), timer.stage("render"):  # a stage that fails is counted too
        raise ValueError("bad picture")
    report = timer.report()
    assert report["decode"] >= 0.05 and report["explain"] >= 0.05 and report["render"] >= 0
    assert report["overhead"] == pytest.approx(report["decode"] + report["render"], abs=1e-5)
    assert 0.05 <= report["overhead_cpu"] < 0.09  # decode's CPU time, not explain's
    assert report["total"] >= report["decode"] + report["explain"]
