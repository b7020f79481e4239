"""Load benchmark of the HTTP service: throughput, latency and server-side overhead.

    python bench/load.py                                   # starts its own servers: demo and resnet50 (random init)
    python bench/load.py --models resnet50 --clients 1 8 --requests 40
    python bench/load.py --url http://127.0.0.1:8000       # a server that is already running

For each model and each number of concurrent clients it sends ``--requests`` explain requests (one
224×224 JPEG each, method ``--method``) and reports requests/s, p50/p99 latency seen by the client,
and, from the timing every JSON response carries, the server-side overhead — decode + preprocess +
render + encode — as a fraction of the model's own explain time (forward + backward passes).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import requests
from images import photo_jpeg  # bench/images.py

OVERHEAD_STAGES = ("decode", "preprocess", "render", "encode")


@dataclass
class Run:
    model: str
    clients: int
    requests: int
    seconds: float
    latencies: list[float]
    timings: list[dict[str, float]]

    def row(self) -> list[str]:
        lat = sorted(self.latencies)
        explain = statistics.mean(t["explain"] for t in self.timings)
        overhead = statistics.mean(sum(t.get(s, 0.0) for s in OVERHEAD_STAGES) for t in self.timings)
        total = statistics.mean(t["total"] for t in self.timings)
        return [self.model, str(self.clients), f"{self.requests / self.seconds:.1f}",
                f"{percentile(lat, 50) * 1000:.0f}", f"{percentile(lat, 99) * 1000:.0f}",
                f"{explain * 1000:.1f}", f"{overhead * 1000:.1f}", f"{overhead / explain:.1%}",
                f"{(total - explain) / explain:.1%}"]


HEADER = ["model", "clients", "req/s", "p50 ms", "p99 ms", "explain ms", "overhead ms",
          "overhead / explain", "all server time / explain"]


def percentile(sorted_values: list[float], p: float) -> float:
    return float(np.percentile(sorted_values, p)) if sorted_values else float("nan")


def one_request(url: str, image: bytes, method: str, fmt: str) -> tuple[float, dict[str, float]]:
    start = time.perf_counter()
    response = requests.post(f"{url}/v1/explain", params={"method": method, "format": fmt},
                             files={"image": ("bench.jpg", image, "image/jpeg")}, timeout=300)
    elapsed = time.perf_counter() - start
    if response.status_code != 200:
        raise RuntimeError(f"HTTP {response.status_code}: {response.text[:300]}")
    if fmt == "json":
        timing = response.json()["timing"]
    else:  # Server-Timing: name;dur=ms, ...
        timing = {part.split(";")[0].strip(): float(part.split("dur=")[1]) / 1000
                  for part in response.headers["Server-Timing"].split(",")}
    return elapsed, timing


def measure(url: str, model: str, clients: int, count: int, image: bytes, method: str, fmt: str) -> Run:
    for _ in range(max(2, clients)):  # warm-up: every thread's first request, lazy imports
        one_request(url, image, method, fmt)
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda _: one_request(url, image, method, fmt), range(count)))
    seconds = time.perf_counter() - start
    return Run(model, clients, count, seconds, [r[0] for r in results], [r[1] for r in results])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server(model: str, weights: str | None, threads: int, torch_threads: int | None):
    """``saliency.api.serve`` (gunicorn, one worker) in a subprocess; yields its URL."""
    port = free_port()
    env = dict(os.environ, SALIENCY_OFFLINE="1")
    if torch_threads:
        env["SALIENCY_TORCH_THREADS"] = str(torch_threads)
    code = (f"from saliency.api import serve; serve('127.0.0.1', {port}, workers=1, threads={threads}, "
            f"model={model!r}, weights={weights!r})")
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen([sys.executable, "-c", code], stdout=log, stderr=subprocess.STDOUT, env=env)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 300
            while True:
                if process.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise RuntimeError(f"the {model} server did not start:\n{log.read().decode()[-3000:]}")
                with contextlib.suppress(requests.ConnectionError):
                    if requests.get(f"{url}/readyz", timeout=5).status_code == 200:
                        break
                time.sleep(0.3)
            yield url
        finally:
            process.terminate()
            process.wait(timeout=30)


def markdown(runs: list[Run]) -> str:
    rows = [HEADER, ["---"] * len(HEADER)] + [r.row() for r in runs]
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="benchmark a running server instead of starting one per model")
    parser.add_argument("--models", nargs="+", default=["demo", "resnet50"],
                        help="models to serve (torchvision ones get random weights)")
    parser.add_argument("--clients", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--requests", type=int, default=32, help="requests per measurement")
    parser.add_argument("--method", default="guided")
    parser.add_argument("--format", default="json", choices=("json", "png"))
    parser.add_argument("--size", type=int, default=224, help="side of the test image")
    parser.add_argument("--threads", type=int, default=8, help="gunicorn threads of the started servers")
    parser.add_argument("--torch-threads", type=int, default=None, help="torch intra-op threads per server")
    args = parser.parse_args(argv)

    image = photo_jpeg(args.size)
    runs: list[Run] = []
    if args.url:
        name = requests.get(f"{args.url}/v1/models", timeout=10).json()["serving"]["name"]
        runs = [measure(args.url, name, c, args.requests, image, args.method, args.format) for c in args.clients]
    else:
        for model in args.models:
            weights = None if model == "demo" else "random"
            with server(model, weights, args.threads, args.torch_threads) as url:
                for clients in args.clients:
                    runs.append(measure(url, model, clients, args.requests, image, args.method, args.format))
                    print(markdown(runs[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    print(f"method {args.method}, format {args.format}, one {args.size}×{args.size} JPEG per request, "
          f"{args.requests} requests per row, {os.cpu_count()} CPUs\n")
    print(markdown(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
