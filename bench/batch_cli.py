"""The batch job as a user runs it: ``saliency batch`` commands, each a fresh process, local against Ray.

    python bench/batch_cli.py                              # resnet50 (random init), 256 JPEGs 224x224, batch 16
    python bench/batch_cli.py --models resnet50,demo --repeats 5

``bench/batch.py`` times the engines inside one warm process. Here every run is the whole command
(interpreter start, imports, model loading, the first batch's fresh memory, writing), timed from
outside: ``saliency batch IMAGES --out DEST`` with ``--engine local``, and with ``--engine ray
--address 127.0.0.1:PORT --workers 1 / 2`` against a Ray head that the script starts once on this
machine with ``--ray-cpus`` CPUs (``ray start --head --block``; not timed), as a cluster user would
have it running. Commands are interleaved (each once a round, in a freshly shuffled order); each
figure is a median, and the ratios are Ray's images/s against the local engine's, on the same cores.
"""

from __future__ import annotations

import os

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback only where the machine demands it
os.environ["RAY_AUTH_MODE"] = "disabled"  # the head and the commands: a cluster on loopback, started here, needs no token

import argparse
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from batch import TARGET_RAY, model_options, write_images  # bench/batch.py

SALIENCY = [str(Path(sys.executable).with_name("saliency"))]  # the installed command


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_head(cpus: int) -> tuple[subprocess.Popen, str]:
    """A Ray head on this machine, in its own process group (``--block``: it stops its processes when ended)."""
    port = free_port()
    ray = Path(sys.executable).with_name("ray")
    head = subprocess.Popen([str(ray), "start", "--head", "--block", f"--port={port}", f"--num-cpus={cpus}",
                             "--num-gpus=0", "--include-dashboard=false", "--node-ip-address=127.0.0.1",
                             "--disable-usage-stats"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        probe = subprocess.run([str(ray), "status", f"--address={address}"], capture_output=True)
        if probe.returncode == 0:
            return head, address
        if head.poll() is not None:
            break
        time.sleep(1)
    stop_head(head)
    raise SystemExit(f"the Ray head did not start at {address}")


def stop_head(head: subprocess.Popen) -> None:
    try:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(head.pid, signal.SIGKILL)


def command(images: Path, dest: Path, model: str, args: argparse.Namespace, engine: list[str]) -> list[str]:
    options = [f"--{k}={v}" for k, v in model_options(model).items()]
    return [*SALIENCY, "batch", str(images), "--out", str(dest), "--model", model, *options,
            "--method", args.method, "--batch-size", str(args.batch_size), *engine]


def timed(argv: list[str], dest: Path, count: int) -> float:
    """Seconds the whole command took; it must explain every image."""
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    shutil.rmtree(dest, ignore_errors=True)
    if done.returncode != 0 or re.search(rf"\b{count} images? explained", done.stdout + done.stderr) is None:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}): {(done.stderr or done.stdout)[-500:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256, help="JPEGs per run (default 256)")
    parser.add_argument("--size", type=int, default=224, help="side of the square JPEGs (default 224)")
    parser.add_argument("--models", default="resnet50", help="comma-separated (default resnet50)")
    parser.add_argument("--batch-size", type=int, default=16, help="model batch (default 16)")
    parser.add_argument("--method", default="guided", help="saliency method (default guided)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--ray-cpus", type=int, default=os.cpu_count() or 1,
                        help="CPUs of the Ray head (default: this machine's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the round order")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="saliency-bench-cli-"))
    head = None
    try:
        write_images(scratch / "images", args.images, args.size)
        head, address = start_head(args.ray_cpus)
        engines = {"local": ["--engine", "local"],
                   **{f"ray {w}": ["--engine", "ray", "--address", address, "--workers", str(w)] for w in (1, 2)}}
        print(f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, a Ray head of {args.ray_cpus} CPUs at "
              f"{address}; {args.images} JPEGs {args.size}x{args.size}, batch {args.batch_size}, "
              f"method {args.method}, {args.repeats} rounds; images/s, median (slowest-fastest round)\n")
        print("| model | local engine | Ray, 1 worker | Ray, 2 workers | Ray 1 / local | Ray 2 / local |")
        print("| --- | --- | --- | --- | --- | --- |")
        for model in [m.strip() for m in args.models.split(",") if m.strip()]:
            seconds: dict[str, list[float]] = {name: [] for name in engines}
            order = list(engines)
            for name in order:  # warm-up: the file cache, and Ray's worker pool on the head
                timed(command(scratch / "images", scratch / "warm", model, args, engines[name]), scratch / "warm",
                      args.images)
            for round_ in range(args.repeats):
                random.Random(args.seed + round_).shuffle(order)
                for name in order:
                    dest = scratch / f"dest-{name.replace(' ', '')}"
                    seconds[name].append(timed(command(scratch / "images", dest, model, args, engines[name]), dest,
                                               args.images))
                print(f"  {model} round {round_ + 1}/{args.repeats}: " +
                      ", ".join(f"{n} {s[-1]:.1f} s" for n, s in seconds.items()), file=sys.stderr, flush=True)
            rate = {n: args.images / statistics.median(s) for n, s in seconds.items()}
            spread = {n: f"{args.images / max(s):.3g}–{args.images / min(s):.3g}" for n, s in seconds.items()}
            ratios = [rate[f"ray {w}"] / rate["local"] for w in (1, 2)]
            print(f"| {model} | " + " | ".join(f"{rate[n]:.3g} ({spread[n]})" for n in engines) + " | " +
                  " | ".join(f"{r:.2f} ({'met' if r >= TARGET_RAY else 'not met'})" for r in ratios) + " |")
    finally:
        if head is not None:
            stop_head(head)
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
