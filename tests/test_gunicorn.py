"""A real gunicorn on 127.0.0.1: one model shared by 8 threads, hit by 8 concurrent clients."""

from __future__ import annotations

import base64
import io
import random
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from PIL import Image

from servers import free_port, running_server

CLIENTS = 8
METHOD_MIXES = ("vanilla", "deconvnet", "guided", "vanilla,guided", "all")


def serve_command(port: int, workers: int = 1, threads: int = CLIENTS) -> list[str]:
    """``saliency.api.serve`` (gunicorn, waitress workers) on ``port`` with the demo model."""
    return [sys.executable, "-c",
            f"from saliency.api import serve; serve('127.0.0.1', {port}, workers={workers}, "
            f"threads={threads}, model='demo')"]


@pytest.fixture(scope="module")
def live_server(tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("gunicorn") / "server.log"
    with running_server(serve_command(port), port, log) as url:
        yield url


def images() -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for size in ((64, 64), (90, 70), (40, 120), (128, 96)):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buffer, "PNG")
        out.append(buffer.getvalue())
    return out


def explain(url: str, image: bytes, methods: str) -> dict:
    response = requests.post(f"{url}/v1/explain", params={"method": methods, "raw": "npy"},
                             files={"image": ("image.png", image, "image/png")}, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def essence(body: dict) -> tuple:
    """What must not depend on concurrency: predictions, targets and every raw map."""
    result = body["results"][0]
    (explanation,) = result["explanations"]
    maps = {m: np.load(io.BytesIO(base64.b64decode(v["npy"]))) for m, v in explanation["maps"].items()}
    return result["predictions"], explanation["target"], maps


def _classes(entries: list[dict]) -> list[tuple]:
    return [(e["index"], e["label"]) for e in entries]


def test_concurrent_mixed_requests_equal_serial_results(live_server):
    pictures = images()
    jobs = [(i, methods) for i in range(len(pictures)) for methods in METHOD_MIXES]
    serial = {job: essence(explain(live_server, pictures[job[0]], job[1])) for job in jobs}
    concurrent_jobs = jobs * 2
    random.Random(0).shuffle(concurrent_jobs)
    with ThreadPoolExecutor(CLIENTS) as pool:
        answers = list(pool.map(lambda job: (job, essence(explain(live_server, pictures[job[0]], job[1]))),
                                concurrent_jobs))
    assert len(answers) == len(concurrent_jobs)
    for job, (predictions, target, maps) in answers:
        want_predictions, want_target, want_maps = serial[job]
        # concurrent requests may share a batch: equal up to the float rounding of batch-size-dependent kernels
        assert _classes(predictions) == _classes(want_predictions) and _classes([target]) == _classes([want_target]), job
        np.testing.assert_allclose([p["probability"] for p in predictions],
                                   [p["probability"] for p in want_predictions], atol=2e-6, err_msg=str(job))
        assert maps.keys() == want_maps.keys(), job
        for method in maps:
            np.testing.assert_allclose(maps[method], want_maps[method], rtol=1e-5, atol=1e-7,
                                       err_msg=f"{job}: {method}")
    guided = [a for a in answers if a[0][1] == "all"][0][1][2]
    assert not np.allclose(guided["guided"], guided["vanilla"])  # the methods really differ


def test_served_errors_and_metrics(live_server):
    response = requests.post(f"{live_server}/v1/explain", files={"image": ("x.png", b"not a picture")}, timeout=30)
    assert response.status_code == 400 and response.json()["error"] == "invalid_image"
    png = requests.post(f"{live_server}/v1/explain", params={"format": "png"},
                        files={"image": ("a.png", images()[0])}, timeout=60)
    assert png.status_code == 200 and png.headers["Content-Type"] == "image/png"
    assert png.headers["X-Saliency-Label"]
    metrics = requests.get(f"{live_server}/metrics", timeout=10).text
    assert 'saliency_http_errors_total{error="invalid_image",route="/v1/explain"}' in metrics


def test_wsgi_entry_point_under_the_gunicorn_command(tmp_path):
    port = free_port()
    command = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--threads", "2",
               "saliency.api.wsgi:app"]
    with running_server(command, port, tmp_path / "wsgi.log", env={"SALIENCY_MODEL": "demo"}) as url:
        assert requests.get(f"{url}/v1/models", timeout=10).json()["serving"]["name"] == "demo"
        assert explain(url, images()[1], "guided")["methods"] == ["guided"]


def test_a_model_that_cannot_load_stops_the_server_with_one_clear_line(tmp_path):
    command = [sys.executable, "-c",
               f"from saliency.api import serve; serve('127.0.0.1', {free_port()}, model='no-such-model')"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "unknown model 'no-such-model'" in done.stderr
    assert "ServerStartError: the service did not start" in done.stderr
    assert done.stderr.count("Traceback") <= 1  # the worker logs one line, not a traceback


def test_dev_mode_serves_with_flasks_own_server(tmp_path):
    port = free_port()
    command = [sys.executable, "-c",
               f"from saliency.api import serve; serve('127.0.0.1', {port}, dev=True, model='demo')"]
    with running_server(command, port, tmp_path / "dev.log") as url:
        assert "gunicorn" not in requests.get(f"{url}/healthz", timeout=10).headers.get("Server", "")
        assert explain(url, images()[2], "vanilla")["results"][0]["width"] == 40
