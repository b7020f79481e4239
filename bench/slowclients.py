"""Slow clients against the service: gunicorn's gthread worker versus the waitress worker.

    python bench/slowclients.py                 # both worker classes, 4 threads, the demo model
    python bench/slowclients.py --workers saliency.api.worker.WaitressWorker

For each worker class a server starts on 127.0.0.1 (``gunicorn saliency.api.wsgi:app``), then: the
usual latency of a normal request (median of 5), the latency of normal requests while 4 silent
sockets, 50 slowloris sockets (a header line every 2 s) or 8 sockets trickling a
``Content-Length: 10000`` body at 1 byte/s are connected, and how long the server takes to drop
those. Every client is local and bounded: at most 62 sockets, a few seconds each.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
STAR = ROOT / "examples" / "star.png"
CLASSES = ("gthread", "saliency.api.worker.WaitressWorker")
REQUEST_TIMEOUT = 4.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(worker_class: str, port: int, threads: int, body_timeout: float) -> subprocess.Popen:
    command = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--worker-class", worker_class,
               "--threads", str(threads), "saliency.api.wsgi:app"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "SALIENCY_MODEL": "demo", "SALIENCY_BODY_TIMEOUT": str(body_timeout)})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if requests.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return process
        except requests.RequestException:
            time.sleep(0.2)
    process.kill()
    raise SystemExit(f"{worker_class}: the server did not start")


def normal(port: int) -> float | None:
    """Seconds one normal request takes, or None when it does not finish within REQUEST_TIMEOUT."""
    started = time.monotonic()
    try:
        with open(STAR, "rb") as f:
            response = requests.post(f"http://127.0.0.1:{port}/v1/explain", params={"format": "png"},
                                     files={"image": f}, timeout=REQUEST_TIMEOUT)
        response.raise_for_status()
    except requests.RequestException:
        return None
    return time.monotonic() - started


def slow_sockets(port: int, kind: str) -> tuple[list[socket.socket], threading.Event]:
    """Open the slow clients of ``kind`` and keep them trickling until the event is set."""
    count = {"silent": 4, "slowloris": 50, "trickle": 8}[kind]
    sockets = [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]
    first = {"silent": b"POST /v1/explain HTTP/1.1\r\nHost: x\r\nContent-Typ",
             "slowloris": b"POST /v1/explain HTTP/1.1\r\nHost: x\r\n",
             "trickle": b"POST /v1/explain HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 10000\r\n\r\n"}
    for s in sockets:
        s.sendall(first[kind])
    stop = threading.Event()

    def drip() -> None:
        tick = 0
        while not stop.wait(1.0):
            tick += 1
            if kind == "silent" or (kind == "slowloris" and tick % 2):
                continue
            for s in sockets:
                try:
                    s.sendall(b"x" if kind == "trickle" else b"X-Slow: %d\r\n" % tick)
                except OSError:
                    pass

    threading.Thread(target=drip, daemon=True).start()
    return sockets, stop


def dropped_after(sockets: list[socket.socket], limit: float) -> float | None:
    """Seconds until the server has closed every socket, or None if some are open after ``limit``."""
    started = time.monotonic()
    open_ones = list(sockets)
    while open_ones and time.monotonic() - started < limit:
        time.sleep(0.25)
        still = []
        for s in open_ones:
            s.setblocking(False)
            try:
                if s.recv(1024) != b"":
                    still.append(s)
            except BlockingIOError:
                still.append(s)
            except OSError:
                pass
        open_ones = still
    return None if open_ones else time.monotonic() - started


def measure(worker_class: str, threads: int, drop_limit: float, body_timeout: float) -> dict[str, str]:
    port = free_port()
    process = start(worker_class, port, threads, body_timeout)
    row: dict[str, str] = {}
    try:
        usual = statistics.median(t for t in (normal(port) for _ in range(20)) if t is not None)
        row["usual latency"] = f"{usual * 1000:.0f} ms"
        for kind in ("silent", "slowloris", "trickle"):
            sockets, stop = slow_sockets(port, kind)
            time.sleep(0.5)
            first = normal(port)
            times = [first] + ([normal(port), normal(port)] if first is not None else [])
            worst = None if any(t is None for t in times) else max(times)
            row[f"{kind}: normal request"] = (f"timed out ({REQUEST_TIMEOUT:g} s)" if worst is None
                                              else f"{worst * 1000:.0f} ms (+{(worst - usual) * 1000:.0f} ms)")
            dropped = dropped_after(sockets, drop_limit)
            row[f"{kind}: dropped after"] = "not dropped" if dropped is None else f"{dropped:.1f} s"
            stop.set()
            for s in sockets:
                s.close()
            time.sleep(0.5)
    finally:
        process.terminate()
        process.wait(30)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", nargs="+", default=list(CLASSES), help="gunicorn worker classes to compare")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--drop-limit", type=float, default=15.0, help="seconds to wait for slow sockets to be dropped")
    parser.add_argument("--body-timeout", type=float, default=10.0,
                        help="SALIENCY_BODY_TIMEOUT for the servers (default 10 s, so that the drop shows; the service's is 60 s)")
    args = parser.parse_args()
    rows = {w: measure(w, args.threads, args.drop_limit, args.body_timeout) for w in args.workers}
    keys = list(next(iter(rows.values())))
    print("| | " + " | ".join(rows) + " |")
    print("|---|" + "---|" * len(rows))
    for key in keys:
        print(f"| {key} | " + " | ".join(rows[w][key] for w in rows) + " |")


if __name__ == "__main__":
    main()
