"""The app's own defences, whatever server runs it: body framing, form limits, method names,
what ``/v1/models`` shows, security headers."""

from __future__ import annotations

import io
import uuid
from pathlib import Path

import pytest
from gunicorn.http.errors import InvalidChunkSize

from saliency.api.app import create_app

STAR = (Path(__file__).resolve().parents[1] / "examples" / "star.png").read_bytes()
CHUNKED = {"Transfer-Encoding": "chunked"}


@pytest.fixture(scope="module")
def client():
    return create_app({"TESTING": True, "model": "demo", "max_upload_mb": 0.05}).test_client()


def post_chunked(client, stream, content_type="image/png"):
    """A body with no Content-Length, as gunicorn's own workers hand a chunked one to the app."""
    return client.post("/v1/explain", input_stream=stream, content_type=content_type, headers=CHUNKED,
                       environ_overrides={"wsgi.input_terminated": True})


def test_a_chunked_body_over_the_limit_is_413_not_cut_short(client):
    response = post_chunked(client, io.BytesIO(STAR + b"\0" * 60_000))   # a valid PNG, then junk past 0.05 MB
    assert response.status_code == 413
    assert response.json["error"] == "request_entity_too_large" and "0.05 MB" in response.json["detail"]
    assert post_chunked(client, io.BytesIO(STAR)).status_code == 200       # within the limit: explained


class BrokenChunks(io.BytesIO):
    """What gunicorn's chunked reader does on ``zz\\r\\n``: raise its own parse error."""

    def read(self, size=-1):
        raise InvalidChunkSize(b"zz")

    readinto = read


@pytest.mark.parametrize("content_type", ["image/png", "multipart/form-data; boundary=b"])
def test_a_body_the_server_cannot_decode_is_400(client, content_type):
    response = post_chunked(client, BrokenChunks(b"zz"), content_type)
    assert response.status_code == 400
    assert response.json["error"] == "bad_request" and "malformed" in response.json["detail"]


def test_a_form_of_too_many_parts_says_which_limit(client):
    boundary = uuid.uuid4().hex
    parts = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="p{i}"\r\n\r\nx\r\n'.encode()
                     for i in range(5000))
    body = parts + f"--{boundary}--\r\n".encode()
    roomy = create_app({"TESTING": True, "model": "demo"}).test_client()   # 16 MB: the body itself fits
    response = roomy.post("/v1/explain", data=body, content_type=f"multipart/form-data; boundary={boundary}")
    assert response.status_code == 413
    assert "more than 1000 parts" in response.json["detail"] and "MB" not in response.json["detail"]


@pytest.mark.parametrize("method", ["all,__dict__", "__dict__,all", "all,nope"])
def test_an_unknown_method_is_refused_even_beside_all(client, method):
    response = client.post("/v1/explain", query_string={"method": method}, data=STAR, content_type="image/png")
    assert response.status_code == 400 and response.json["error"] == "unknown_method"
    assert method.replace("all", "").strip(",") in response.json["detail"]


def test_models_shows_the_weights_file_name_not_where_it_lies(client):
    weights = client.get("/v1/models").json["serving"]["weights"]
    assert weights == "file 'demo.pt'"


def test_security_headers(client):
    page = client.get("/", headers={"Accept": "text/html"})
    assert page.status_code == 200 and page.mimetype == "text/html"
    policy = page.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in policy and "script-src 'self'" in policy and "img-src 'self' data: blob:" in policy
    answers = [page, client.get("/v1/methods"), client.get("/static/app.js"), client.get("/no-such-route"),
               client.post("/v1/explain", data=b"text", content_type="image/png")]
    assert [a.headers.get("X-Content-Type-Options") for a in answers] == ["nosniff"] * len(answers)
    assert "Content-Security-Policy" not in answers[1].headers   # JSON needs no page policy


@pytest.mark.parametrize("name, value", [("header_timeout", "0"), ("body_timeout", "soon"), ("memory_budget_mb", "-1"),
                                         ("graceful_timeout", "1.5"), ("memory_wait", "inf")])
def test_server_limits_must_be_positive_numbers(name, value):
    from saliency.api.config import ConfigError, load_settings
    with pytest.raises(ConfigError, match=f"SALIENCY_{name.upper()} must be a positive number"):
        load_settings({name: value}, environ={})
