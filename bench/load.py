"""Load benchmark of the HTTP service: batching across requests on and off, throughput, latency, overhead.

    python bench/load.py                                   # demo and resnet50 (random init), 1, 8 and 32 clients
    python bench/load.py --models resnet50 --clients 1 8 --requests 40
    python bench/load.py --url http://127.0.0.1:8000       # a server that is already running

For each model it starts two servers with the service's default settings (one gunicorn worker),
one batching requests (``SALIENCY_BATCH_DELAY_MS`` default) and one not (``SALIENCY_BATCH_DELAY_MS=0``),
and for each number of concurrent clients sends ``--requests`` explain requests (one 224×224 JPEG
each, method ``--method``) to each in turn, ``--rounds`` times. It reports requests/s, p50/p99
latency seen by the client, the model calls' batch sizes, and, from the timing every JSON
response carries, the server-side overhead — decode + preprocess + render + encode, as wall time
and as the CPU time of the request's thread — against the model's own time per image (forward + backward passes of its batch, divided by the batch's images),
and how busy the model thread was (model time per image × requests / wall time): near 100 %,
rendering and encoding in the request threads do not hold up the model.
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
    batching: str
    clients: int
    requests: int
    seconds: float
    latencies: list[float]
    timings: list[dict[str, float]]

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    @property
    def p50(self) -> float:
        return percentile(sorted(self.latencies), 50)

    def row(self) -> list[str]:
        lat = sorted(self.latencies)
        sizes = [t.get("batch_images", 1) for t in self.timings]
        per_image = [t["explain"] / max(1, t.get("batch_images", 1)) for t in self.timings]
        overhead = statistics.mean(sum(t.get(s, 0.0) for s in OVERHEAD_STAGES) for t in self.timings)
        overhead_cpu = statistics.mean(t.get("overhead_cpu", float("nan")) for t in self.timings)
        model = statistics.mean(per_image)
        busy = sum(per_image) / self.seconds
        return [self.model, self.batching, str(self.clients), f"{self.rate:.2f}",
                f"{percentile(lat, 50) * 1000:.0f}", f"{percentile(lat, 99) * 1000:.0f}",
                f"{statistics.mean(sizes):.1f} (max {max(sizes)})", f"{model * 1000:.1f}", f"{overhead * 1000:.1f}",
                f"{overhead / model:.1%}", f"{overhead_cpu * 1000:.1f}", f"{overhead_cpu / model:.1%}",
                f"{min(busy, 1.0):.0%}"]


HEADER = ["model", "batching", "clients", "req/s", "p50 ms", "p99 ms", "batch size", "model ms / image",
          "overhead ms", "overhead / model time", "overhead CPU ms", "overhead CPU / model time", "model busy"]


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


def measure(url: str, model: str, batching: str, clients: int, count: int, image: bytes, method: str,
            fmt: str) -> Run:
    with ThreadPoolExecutor(clients) as pool:  # warm-up: every thread's first request, lazy imports
        list(pool.map(lambda _: one_request(url, image, method, fmt), range(max(2, clients))))
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda _: one_request(url, image, method, fmt), range(count)))
    seconds = time.perf_counter() - start
    return Run(model, batching, clients, count, seconds, [r[0] for r in results], [r[1] for r in results])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server(model: str, weights: str | None, threads: int | None, torch_threads: int | None,
           settings: dict[str, str] | None = None):
    """``saliency.api.serve`` (one worker) in a subprocess, with ``SALIENCY_*`` ``settings``; yields its URL."""
    port = free_port()
    env = dict(os.environ, SALIENCY_OFFLINE="1", **{f"SALIENCY_{k.upper()}": v for k, v in (settings or {}).items()})
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


def ratios(runs: list[Run], delay_ms: float) -> str:
    """Batched against unbatched per model and clients (medians over rounds), against the targets."""
    lines = ["| model | clients | req/s batched / unbatched | p50 batched / (unbatched + delay) |",
             "| --- | --- | --- | --- |"]
    keys = sorted({(r.model, r.clients) for r in runs}, key=lambda k: (k[0] != "demo", k[1]))
    for model, clients in keys:
        on = [r for r in runs if (r.model, r.clients, r.batching) == (model, clients, "on")]
        off = [r for r in runs if (r.model, r.clients, r.batching) == (model, clients, "off")]
        if not on or not off:
            continue
        rate = statistics.median(r.rate for r in on) / statistics.median(r.rate for r in off)
        p50 = statistics.median(r.p50 for r in on) / (statistics.median(r.p50 for r in off) + delay_ms / 1000)
        lines.append(f"| {model} | {clients} | {rate:.2f} | {p50:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="benchmark a running server instead of starting two per model")
    parser.add_argument("--models", nargs="+", default=["demo", "resnet50"],
                        help="models to serve (torchvision ones get random weights)")
    parser.add_argument("--clients", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=48, help="requests per measurement")
    parser.add_argument("--rounds", type=int, default=2, help="each measurement this many times, alternating")
    parser.add_argument("--method", default="guided")
    parser.add_argument("--format", default="json", choices=("json", "png"))
    parser.add_argument("--size", type=int, default=224, help="side of the test image")
    parser.add_argument("--threads", type=int, default=None, help="request threads of the started servers "
                        "(default: the service's own)")
    parser.add_argument("--torch-threads", type=int, default=None, help="torch intra-op threads per server")
    args = parser.parse_args(argv)

    from saliency.api.config import Settings

    delay = Settings().batch_delay_ms
    image = photo_jpeg(args.size)
    runs: list[Run] = []
    if args.url:
        name = requests.get(f"{args.url}/v1/models", timeout=10).json()["serving"]["name"]
        runs = [measure(args.url, name, "as set", c, args.requests, image, args.method, args.format)
                for c in args.clients]
    else:
        for model in args.models:
            weights = None if model == "demo" else "random"
            with server(model, weights, args.threads, args.torch_threads) as on, \
                    server(model, weights, args.threads, args.torch_threads, {"batch_delay_ms": "0"}) as off:
                for _ in range(args.rounds):
                    for clients in args.clients:
                        for batching, url in (("on", on), ("off", off)):
                            runs.append(measure(url, model, batching, clients, args.requests, image, args.method,
                                                args.format))
                            print(markdown(runs[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    print(f"method {args.method}, format {args.format}, one {args.size}×{args.size} JPEG per request, "
          f"{args.requests} requests per row, {args.rounds} round(s), {os.cpu_count()} CPUs, "
          f"batching: the defaults (batch size {Settings().batch_size}, delay {delay:g} ms) against delay 0\n")
    print(markdown(runs))
    if not args.url:
        print()
        print(ratios(runs, delay))
    return 0


if __name__ == "__main__":
    sys.exit(main())
