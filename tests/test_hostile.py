"""The service against hostile clients and heavy requests, on real servers on 127.0.0.1.

Slow and silent sockets, bodies over the limit however they are framed, malformed chunks,
shutdown with a request in flight, and the per-worker memory budget. Every client here is bounded
in count and time.
"""

from __future__ import annotations

import io
import json
import os
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from servers import free_port, server_process, worker_pids

HEADER_TIMEOUT = 3
BODY_TIMEOUT = 3
BUDGET_MB = 600
STAR = Path(__file__).resolve().parents[1] / "examples" / "star.png"


def serve_command(port: int, **settings) -> list[str]:
    """``saliency.api.serve`` on ``port`` (the production server, 4 threads) with ``settings``."""
    options = {"model": "demo", "threads": 4, **settings}
    return [sys.executable, "-c", f"from saliency.api import serve; serve('127.0.0.1', {port}, **{options!r})"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``(url, port, master process)`` of one server with short deadlines and a 600 MB budget."""
    port = free_port()
    log = tmp_path_factory.mktemp("hostile") / "server.log"
    command = serve_command(port, header_timeout=HEADER_TIMEOUT, body_timeout=BODY_TIMEOUT,
                            memory_budget_mb=BUDGET_MB, memory_wait=2)
    with server_process(command, port, log) as (url, process):
        yield url, port, process


def explain_star(url: str, timeout: float = 30) -> float:
    """One normal request; its latency in seconds."""
    started = time.monotonic()
    with open(STAR, "rb") as f:
        response = requests.post(f"{url}/v1/explain", params={"format": "png"}, files={"image": f}, timeout=timeout)
    assert response.status_code == 200, response.text
    return time.monotonic() - started


def exchange(port: int, head: bytes, body: Iterable[bytes] = (), timeout: float = 30) -> tuple[int, dict, bytes]:
    """Send ``head`` then ``body`` (pieces), reading the answer as soon as it comes, even mid-body."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(head)
        pieces: Iterator[bytes] = iter(body)
        pending = b""
        deadline = time.monotonic() + timeout
        s.setblocking(False)
        while time.monotonic() < deadline:
            if not pending:
                pending = next(pieces, b"")
            readable, writable, _ = select.select([s], [s] if pending else [], [], 1.0)
            if readable:
                break
            if writable:
                try:
                    pending = pending[s.send(pending):]
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    break
        s.setblocking(True)
        return _read_answer(s)


def _read_answer(s: socket.socket) -> tuple[int, dict, bytes]:
    data = b""
    try:
        while b"\r\n\r\n" not in data or len(data) < _answer_length(data):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except ConnectionResetError:
        pass
    head, _, payload = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/1."), f"no HTTP answer: {data[:200]!r}"
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, payload


def _answer_length(data: bytes) -> int:
    head, _, _ = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(head) + 4 + int(line.split(b":")[1])
    return len(data) + 1


def chunked(data: bytes, piece: int = 1 << 20) -> Iterator[bytes]:
    for i in range(0, len(data), piece):
        part = data[i:i + piece]
        yield b"%x\r\n" % len(part) + part + b"\r\n"
    yield b"0\r\n\r\n"


def head(extra: str, path: str = "/v1/explain") -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n{extra}\r\n".encode()


def png(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **options)
    return buffer.getvalue()


def closed_by_server(s: socket.socket) -> bool:
    s.setblocking(False)
    try:
        return s.recv(1024) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


# --- slow clients --------------------------------------------------------------------------------

class SlowClients:
    """50 slowloris sockets (a header line each second), 4 silent ones and 8 trickling a body at 2 bytes/s."""

    def __init__(self, port: int) -> None:
        address = ("127.0.0.1", port)
        self.slowloris = [socket.create_connection(address) for _ in range(50)]
        self.silent = [socket.create_connection(address) for _ in range(4)]
        self.tricklers = [socket.create_connection(address) for _ in range(8)]
        for s in self.slowloris:
            s.sendall(b"POST /v1/explain HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        for s in self.silent:
            s.sendall(b"POST /v1/explain HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Typ")
        for s in self.tricklers:
            s.sendall(head("Content-Length: 10000\r\n"))
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._drip, daemon=True)
        self.thread.start()

    def _drip(self) -> None:
        tick = 0
        while not self.stop.wait(0.5):
            tick += 1
            for s in self.tricklers + (self.slowloris if tick % 2 == 0 else []):
                try:
                    s.sendall(b"x" if s in self.tricklers else b"X-Slow: %d\r\n" % tick)
                except OSError:
                    pass

    def all(self) -> list[socket.socket]:
        return self.slowloris + self.silent + self.tricklers

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        for s in self.all():
            s.close()


def test_slow_clients_do_not_delay_a_normal_request(server):
    url, port, _ = server
    usual = max(explain_star(url) for _ in range(3))
    clients = SlowClients(port)
    try:
        time.sleep(0.5)
        during = [explain_star(url, timeout=10) for _ in range(3)]
        assert all(not closed_by_server(s) for s in clients.slowloris[:5])  # still connected meanwhile
    finally:
        clients.close()
    assert max(during) <= usual + 1.0, (usual, during)


def test_slow_connections_are_dropped_after_the_head_and_body_deadlines(server):
    _, port, _ = server
    clients = SlowClients(port)
    try:
        started = time.monotonic()
        open_sockets = clients.all()
        while open_sockets and time.monotonic() - started < HEADER_TIMEOUT + BODY_TIMEOUT + 4:
            time.sleep(0.25)
            open_sockets = [s for s in open_sockets if not closed_by_server(s)]
        assert not open_sockets, f"{len(open_sockets)} slow connections still open"
        assert time.monotonic() - started >= HEADER_TIMEOUT - 1  # dropped at the deadline, not at once
    finally:
        clients.close()


# --- bodies over the limit, malformed bodies ---------------------------------------------------------

@pytest.fixture(scope="module")
def oversized() -> dict[str, bytes]:
    """The bodies a 16 MB limit must refuse: junk, a small PNG followed by junk, a valid 20.9 MiB PNG."""
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (2700, 2700, 3), dtype=np.uint8)
    return {"junk": os.urandom(18 * 1024 * 1024),
            "png and junk": png(Image.new("RGB", (128, 128), "white")) + os.urandom(17 * 1024 * 1024),
            "big png": png(Image.fromarray(noise), compress_level=0)}


@pytest.mark.parametrize("name", ["junk", "png and junk", "big png"])
def test_a_body_over_the_limit_is_413_however_it_is_framed(server, oversized, name):
    _, port, _ = server
    body = oversized[name]
    for framing, parts in (("Transfer-Encoding: chunked\r\n", chunked(body)),
                           (f"Content-Length: {len(body)}\r\n", (body[i:i + 1 << 20] for i in range(0, len(body), 1 << 20)))):
        status, headers, payload = exchange(port, head(framing), parts)
        assert status == 413, (name, framing, payload[:300])
        answer = json.loads(payload)
        assert answer["error"] == "request_entity_too_large" and "16 MB" in answer["detail"]
        assert headers["content-type"] == "application/json" and headers["x-content-type-options"] == "nosniff"


def test_a_malformed_chunk_size_is_400(server):
    _, port, _ = server
    status, headers, payload = exchange(port, head("Transfer-Encoding: chunked\r\n"), [b"zz\r\nabc\r\n0\r\n\r\n"])
    assert status == 400, payload
    assert json.loads(payload)["error"] == "bad_request" and "chunk" in json.loads(payload)["detail"]
    assert headers["content-type"] == "application/json"


def test_an_oversized_head_is_431_and_a_broken_one_400(server):
    _, port, _ = server
    status, _, payload = exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n")
    assert status == 431 and "64 kB" in json.loads(payload)["detail"]
    status, _, payload = exchange(port, b"GET /healthz HTTP/1.1\r\nHost x\r\n\r\n")
    assert status == 400 and json.loads(payload)["error"] == "bad_request"


def test_a_chunked_body_within_the_limit_is_explained(server):
    _, port, _ = server
    status, headers, payload = exchange(port, head("Transfer-Encoding: chunked\r\n", "/v1/explain?format=png"),
                                        chunked(STAR.read_bytes(), piece=1000))
    assert status == 200 and payload.startswith(b"\x89PNG") and headers["x-saliency-label"] == "star"


# --- memory ----------------------------------------------------------------------------------------

def memory_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} for process {pid}")


def one_bit_png(side: int) -> bytes:
    return png(Image.new("1", (side, side)))


def test_a_request_over_the_memory_budget_on_its_own_is_413(server):
    url, _, process = server
    (worker,) = worker_pids(process.pid)
    before = memory_mb(worker, "VmRSS")
    five = [("image", (f"{i}.png", one_bit_png(6000), "image/png")) for i in range(5)]  # 21 kB on the wire
    response = requests.post(f"{url}/v1/explain", files=five, timeout=30)
    assert response.status_code == 413, response.text
    body = response.json()
    assert body["error"] == "over_memory_budget" and f"{BUDGET_MB} MB" in body["detail"]
    assert memory_mb(worker, "VmRSS") < before + 50  # refused before anything was decoded


def test_concurrent_large_requests_stay_within_the_memory_budget(server):
    url, _, process = server
    (worker,) = worker_pids(process.pid)
    explain_star(url)
    picture = one_bit_png(4000)  # alone about 400 MB at its peak by the estimate, so one at a time
    baseline = memory_mb(worker, "VmRSS")
    Path(f"/proc/{worker}/clear_refs").write_text("5")  # restart the peak (VmHWM) from here

    def post(_: int) -> requests.Response:
        return requests.post(f"{url}/v1/explain", files={"image": ("big.png", picture, "image/png")}, timeout=60)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(post, range(8)))
    statuses = [a.status_code for a in answers]
    assert set(statuses) <= {200, 503} and 200 in statuses, [(a.status_code, a.text[:200]) for a in answers]
    for busy in (a for a in answers if a.status_code == 503):
        assert busy.json()["error"] == "busy" and int(busy.headers["Retry-After"]) >= 1
    peak = memory_mb(worker, "VmHWM")
    assert peak - baseline <= BUDGET_MB, (baseline, peak)
    assert memory_mb(worker, "VmRSS") - baseline < 150  # given back after the requests


# --- shutdown ----------------------------------------------------------------------------------------

def slow_server(port: int, seconds: float, **settings) -> tuple[list[str], dict[str, str]]:
    env = {"PYTHONPATH": str(Path(__file__).parent), "SLOWNET_SECONDS": str(seconds)}
    return serve_command(port, model="slownet:build", **settings), env


def request_in_flight(url: str) -> tuple[threading.Thread, dict]:
    """Start a request that spends the slow model's seconds in the forward pass; its outcome lands in the dict."""
    outcome: dict = {}

    def send() -> None:
        try:
            with open(STAR, "rb") as f:
                outcome["response"] = requests.post(f"{url}/v1/explain", params={"method": "vanilla"},
                                                    files={"image": f}, timeout=60)
        except requests.ConnectionError as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=send)
    thread.start()
    time.sleep(1.0)  # well inside the model by now
    return thread, outcome


def refuses_connections(port: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except ConnectionRefusedError:
            return True
        time.sleep(0.1)
    return False


def test_shutdown_lets_a_request_in_flight_finish_and_refuses_new_connections(tmp_path):
    port = free_port()
    command, env = slow_server(port, 4, timeout=30)
    with server_process(command, port, tmp_path / "server.log", env=env) as (url, process):
        thread, outcome = request_in_flight(url)
        process.send_signal(signal.SIGTERM)
        assert refuses_connections(port, within=2.5)
        thread.join(30)
        assert process.wait(30) == 0
    assert "response" in outcome, outcome
    assert outcome["response"].status_code == 200 and outcome["response"].json()["methods"] == ["vanilla"]


def test_shutdown_waits_no_longer_than_the_graceful_timeout(tmp_path):
    port = free_port()
    command, env = slow_server(port, 8, timeout=30, graceful_timeout=1)
    with server_process(command, port, tmp_path / "server.log", env=env) as (url, process):
        thread, outcome = request_in_flight(url)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
        assert time.monotonic() - started < 5
        thread.join(30)
    assert "error" in outcome, outcome  # cut: 8 s of work, 1 s allowed
