"""Dynamic batching across requests: coalescing, per-request targets, independence, errors, back-pressure."""

from __future__ import annotations

import contextlib
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

import saliency
from saliency.api import create_app
from saliency.api.batching import Batcher
from saliency.api.config import ConfigError, load_settings
from saliency.errors import ModelOutputError
from saliency.models import LoadedModel, load_model
from saliency.pipeline import prepare
from tests.test_api import decode_npy, encode, picture, post


def photos(n: int, size=(72, 64)) -> list[bytes]:
    return [encode(picture(size, seed=i)) for i in range(n)]


def concurrently(app, queries: list[str], images: list[bytes]) -> list:
    """POST each (query, image) from its own thread, all released at once; responses in the same order."""
    start = threading.Barrier(len(queries))
    out: list = [None] * len(queries)

    def one(i: int) -> None:
        client = app.test_client()
        start.wait()
        out[i] = post(client, images[i], queries[i])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(queries))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


@contextlib.contextmanager
def model_held_busy(app, query: str, images: list[bytes]):
    """One long request of another kind in the model while the body runs: what arrives meanwhile queues up."""
    batcher = app.extensions["saliency"].batcher
    out: list = []
    thread = threading.Thread(target=lambda: out.append(post(app.test_client(), images, query)))
    thread.start()
    deadline = time.monotonic() + 60
    while not batcher.busy and time.monotonic() < deadline:
        time.sleep(0.002)
    assert batcher.busy
    yield
    thread.join(300)
    assert out[0].status_code == 200, out[0].get_data(as_text=True)


DEMO_PACER = ("?method=smoothgrad&samples=64", photos(12))
"""About a second of SmoothGrad on the demo model: long beside decoding a few small pictures."""


def slow_app(**settings):
    """A server of ``tests.slownet``: every forward pass on a picture sleeps ``SLOWNET_SECONDS``."""
    return create_app({"TESTING": True, "model": "tests.slownet:build", "weights": "random", **settings})


def assert_rounding_close(actual: np.ndarray, expected: np.ndarray) -> None:
    """Equal up to float rounding: the demo's CPU kernels for a batch of one differ from a batch's in the last bits."""
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5 * float(np.abs(expected).max()))


def npy(response, method: str, rank: int = 0) -> np.ndarray:
    assert response.status_code == 200, response.get_data(as_text=True)
    (result,) = response.get_json()["results"]
    return decode_npy(result["explanations"][rank]["maps"][method]["npy"])


@pytest.fixture(scope="module")
def batched():
    """Waits up to 2 s for company, so that concurrent requests share one model call."""
    return create_app({"TESTING": True, "model": "demo", "batch_size": 4, "batch_delay_ms": 2000})


@pytest.fixture(scope="module")
def unbatched():
    return create_app({"TESTING": True, "model": "demo", "batch_delay_ms": 0})


def test_concurrent_requests_share_one_model_call_and_each_gets_its_own_maps(batched):
    images = photos(4)
    with model_held_busy(batched, *DEMO_PACER):
        answers = concurrently(batched, ["?method=guided,smoothgrad&samples=3&raw=npy"] * 4, images)
    assert [a.get_json()["timing"]["batch_images"] for a in answers] == [4, 4, 4, 4]
    model = batched.extensions["saliency"].model
    for data, answer in zip(images, answers):
        x = prepare(model, data).tensor
        alone = saliency.explain(model.module, x, ["guided", "smoothgrad"], options={"samples": 3})
        for method in ("guided", "smoothgrad"):  # the demo's kernels differ for a batch of one by rounding only
            assert_rounding_close(npy(answer, method), alone[method][0].numpy())
    exposition = batched.test_client().get("/metrics").get_data(as_text=True)
    assert 'saliency_batch_size_bucket{le="4.0"} 1.0' in exposition  # the pacer's 12 and the four
    assert "saliency_queue_wait_seconds_count 5.0" in exposition
    assert "saliency_queue_depth 0.0" in exposition


def test_each_request_keeps_its_own_target_and_topk(batched):
    images = photos(4)
    queries = ["?method=vanilla&target=1&raw=npy", "?method=vanilla&target=6&raw=npy",
               "?method=vanilla&target=1&raw=npy", "?method=vanilla&topk=2&raw=npy"]
    with model_held_busy(batched, *DEMO_PACER):
        answers = concurrently(batched, queries, images)
    sizes = [a.get_json()["timing"]["batch_images"] for a in answers]
    assert sizes == [3, 3, 3, 1]  # fixed targets share a call; a top-2 request is explained apart
    model = batched.extensions["saliency"].model
    for data, answer, target in zip(images[:3], answers[:3], [1, 6, 1]):
        (result,) = answer.get_json()["results"]
        assert [e["target"]["index"] for e in result["explanations"]] == [target]
        expected = saliency.explain(model.module, prepare(model, data).tensor, "vanilla", target=target)
        assert_rounding_close(npy(answer, "vanilla"), expected["vanilla"][0].numpy())
    (top2,) = answers[3].get_json()["results"]
    assert len(top2["explanations"]) == 2


def test_answers_do_not_depend_on_the_company_bitwise_where_kernels_do_not():
    """ResNet18's CPU kernels give every sample the same result whatever the batch: there, maps from
    a shared model call equal the unbatched service's bit for bit, SmoothGrad's noise included."""
    images = photos(3, size=(64, 64))
    query = "?method=guided,smoothgrad&samples=2&raw=npy"
    shared = create_app({"TESTING": True, "model": "resnet18", "weights": "random", "batch_size": 3,
                         "batch_delay_ms": 3000})
    with model_held_busy(shared, "?method=smoothgrad&samples=16", photos(2)):
        together = concurrently(shared, [query] * 3, images)
    assert [a.get_json()["timing"]["batch_images"] for a in together] == [3, 3, 3]
    model = shared.extensions["saliency"].model
    for data, answer in zip(images, together):
        x = prepare(model, data).tensor  # alone: a batch of one
        alone = saliency.explain(model.module, x, ["guided", "smoothgrad"], options={"samples": 2})
        for method in ("guided", "smoothgrad"):
            assert np.array_equal(npy(answer, method), alone[method][0].numpy()), method


def test_without_a_delay_each_request_is_explained_alone(unbatched):
    answers = concurrently(unbatched, ["?method=vanilla"] * 3, photos(3))
    assert [a.get_json()["timing"]["batch_images"] for a in answers] == [1, 1, 1]


class _FailsOnBrightInputs(torch.nn.Module):
    """A classifier whose output is malformed for an input brighter than 2: a fault of one request's image."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.fc(torch.relu(self.conv(x)).mean((2, 3)))
        return logits.unsqueeze(1) if bool((x.mean((1, 2, 3)) > 2).any()) else logits


def _prepared(model: LoadedModel, value: float):
    tensor = np.full((16, 16, 3), 0, np.uint8)
    p = prepare(model, encode(Image.fromarray(tensor)))
    p.tensor.fill_(value)
    return p


def test_an_error_in_one_request_fails_that_request_only():
    torch.manual_seed(0)
    model = LoadedModel(name="fragile", module=_FailsOnBrightInputs().eval(), preprocessing=load_model("demo").preprocessing,
                        labels=("a", "b", "c"))
    batcher = Batcher(model, max_batch=3, delay=2.0, max_queue=8, queue_timeout=30)
    values = [0.5, 5.0, -0.5]
    out: list = [None] * 3
    start = threading.Barrier(3)

    def one(i: int) -> None:
        try:
            with batcher.arriving():
                start.wait()  # all three on their way before any is queued: they share one call
                out[i] = batcher.explain([_prepared(model, values[i])], ["vanilla"], None, 1, {})
        except Exception as exc:  # noqa: BLE001 - the test looks at it
            out[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert isinstance(out[1], ModelOutputError)
    for i in (0, 2):
        assert out[i].batch_images == 3
        x = _prepared(model, values[i]).tensor
        expected = saliency.explain(model.module, x, "vanilla")["vanilla"][0]
        torch.testing.assert_close(out[i].explained[0].maps[0]["vanilla"], expected)


def test_a_full_queue_is_refused_at_once_with_retry_after(monkeypatch):
    monkeypatch.setenv("SLOWNET_SECONDS", "1.5")
    app = slow_app(batch_delay_ms=0, max_queue=1)
    batcher = app.extensions["saliency"].batcher
    answers: list = []
    running = threading.Thread(target=lambda: answers.append(post(app.test_client(), photos(1)[0], "?method=vanilla")))
    running.start()
    waiting = threading.Thread(target=lambda: answers.append(post(app.test_client(), photos(1)[0], "?method=vanilla")))
    deadline = time.monotonic() + 30
    while not batcher.busy and time.monotonic() < deadline:
        time.sleep(0.002)
    waiting.start()
    while batcher.depth == 0 and time.monotonic() < deadline:
        time.sleep(0.002)
    assert batcher.busy and batcher.depth == 1  # one in the model, one queued: the queue is full
    refused = post(app.test_client(), photos(1)[0], "?method=vanilla")
    still_busy = batcher.busy
    running.join(30)
    waiting.join(30)
    assert refused.status_code == 503 and refused.get_json()["error"] == "overloaded"
    assert int(refused.headers["Retry-After"]) >= 1
    assert still_busy  # refused at once, while the first request was still in the model
    assert [a.status_code for a in answers] == [200, 200]


def test_a_request_that_waits_too_long_for_the_model_gets_503(monkeypatch):
    monkeypatch.setenv("SLOWNET_SECONDS", "1.5")
    app = slow_app(batch_delay_ms=0, queue_timeout=0.3)
    with model_held_busy(app, "?method=vanilla", photos(1)):
        response = post(app.test_client(), photos(1)[0], "?method=vanilla")
        assert app.extensions["saliency"].batcher.busy  # it gave up while the model was still busy
    assert response.status_code == 503 and "waited 0.3 s" in response.get_json()["detail"]
    assert "Retry-After" in response.headers
    assert app.extensions["saliency"].batcher.depth == 0


def test_a_lone_request_does_not_wait_for_company():
    model = load_model("demo")
    batcher = Batcher(model, max_batch=8, delay=30.0, max_queue=4, queue_timeout=60)
    with batcher.arriving():
        answer = batcher.explain([prepare(model, photos(1)[0])], ["vanilla"], None, 1, {})
    assert answer.batch_images == 1 and answer.waited < 15  # no other request on its way: no 30 s wait


@pytest.mark.parametrize(("env", "message"), [
    ({"SALIENCY_BATCH_SIZE": "0"}, "BATCH_SIZE must be positive"),
    ({"SALIENCY_BATCH_DELAY_MS": "-1"}, "BATCH_DELAY_MS must be from 0"),
    ({"SALIENCY_BATCH_DELAY_MS": "soon"}, "must be a number"),
    ({"SALIENCY_MAX_QUEUE": "0"}, "MAX_QUEUE must be positive"),
    ({"SALIENCY_QUEUE_TIMEOUT": "nan"}, "QUEUE_TIMEOUT must be positive"),
])
def test_bad_batching_settings_are_one_line_errors(env, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(environ=env)


def test_batching_settings_from_the_environment():
    s = load_settings(environ={"SALIENCY_BATCH_SIZE": "16", "SALIENCY_BATCH_DELAY_MS": "2.5",
                               "SALIENCY_MAX_QUEUE": "4", "SALIENCY_QUEUE_TIMEOUT": "7"})
    assert (s.batch_size, s.batch_delay_ms, s.max_queue, s.queue_timeout) == (16, 2.5, 4, 7.0)


def test_predicting_alone_is_one_forward_pass_without_maps():
    model = load_model("demo")
    batcher = Batcher(model, max_batch=8, delay=0.0, max_queue=4, queue_timeout=30)
    pictures = [prepare(model, data) for data in photos(2)]
    answer = batcher.explain(pictures, (), None, 2, {})
    expected = model.module(torch.cat([p.tensor for p in pictures])).softmax(1)
    for row, explained in enumerate(answer.explained):
        torch.testing.assert_close(explained.probabilities, expected[row].detach(), rtol=1e-5, atol=1e-6)
        assert explained.targets == expected[row].topk(2).indices.tolist()
        assert explained.maps == [{}, {}]
    assert set(answer.report.seconds) == {"forward"}
