"""Batch-job benchmark: ``explain_dataset`` (local and Ray engines) against a bare forward+backward loop.

    python bench/batch.py                                  # resnet50 (random init) and demo, 256 JPEGs 224x224
    python bench/batch.py --models demo --images 64 --repeats 3
    python bench/batch.py --skip-ray                       # the local engine only
    python bench/batch.py --models resnet50 --images 1024 --skip-bare --repeats 2   # a longer job
    python bench/batch.py --device cuda --skip-ray --images 2048        # on a GPU (the default where one is seen)

It writes ``--images`` photo-like JPEGs (``--size`` square) to a temporary folder, then for each
model measures, as images per second:

* *bare autograd*: stock ``torch.autograd.grad`` (one forward, one input-only backward pass, each
  image's top-1 class) over the images already decoded, prepared and on the model's device, in
  batches of ``--batch-size`` — for reference;
* *limit*: the same loop through ``saliency.explain(module, x, METHOD)`` — what the model itself
  costs, and so the most a batch job can reach;
* *local*: ``explain_dataset(..., engine="local")`` from the JPEG files to a fresh Parquet DEST,
  everything included (model loading, decoding, preprocessing, explaining, writing);
* *Ray, 1 / 2 workers*: ``explain_dataset(..., engine="ray", workers=...)`` on a local Ray that the
  script starts once (its start-up is not timed). Every Ray run starts its own model actors, so
  each figure includes the actors' start-up (a process, torch's import, the model's loading).

Every variant runs in this process on the same files; repetitions are interleaved (every variant
once a round, in a freshly shuffled order) and each figure is a median. Each variant also runs,
in the same rounds, on just the first batch of images: that run's seconds are its fixed cost per
run (for Ray mostly the actors' start-up), and (N - B) / (t[N] - t[B]) its steady rate once
running. One untimed run per variant on that batch warms up first (imports, thread pools, Ray
Data's first execution). Ratios, not seconds, are what to compare across machines.
"""

from __future__ import annotations

import os

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # before anything imports ray

import argparse
import gc
import logging
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from images import photo_jpeg  # bench/images.py

import saliency
from saliency.batch import DEFAULT_SHARD_SIZE, explain_dataset
from saliency.batch.local import available_cores
from saliency.batch.sources import Source
from saliency.batch.decoding import decode
from saliency.memory import reuse_freed_memory
from saliency.models import LoadedModel, load_model
from saliency.pipeline import StageSeconds

TARGET_LOCAL = 0.9   # local engine ≥ 0.9 × the limit
TARGET_RAY = 0.8     # Ray engine ≥ 0.8 × the local engine
VARIANTS = ("bare autograd", "limit", "local", "ray 1", "ray 2")


def write_images(folder: Path, count: int, size: int) -> list[str]:
    folder.mkdir(parents=True)
    paths = []
    for i in range(count):
        path = folder / f"img{i:05d}.jpg"
        path.write_bytes(photo_jpeg(size, i))
        paths.append(str(path))
    return paths


def model_options(name: str) -> dict[str, str]:
    """``load_model`` / ``explain_dataset`` options: random weights for torchvision models (nothing downloaded)."""
    return {} if name == "demo" else {"weights": "random"}


def prepared_batches(loaded: LoadedModel, paths: list[str], batch: int) -> list[torch.Tensor]:
    """The images decoded and prepared as the batch job does it, stacked into model batches on the model's device,
    ahead of time."""
    tensors = []
    for path in paths:
        decoded = decode(Source(path), loaded.preprocessing)
        if decoded.error is not None:
            raise RuntimeError(f"{path}: {decoded.error}")
        tensors.append(torch.from_numpy(decoded.tensor))
    return [torch.stack(tensors[i:i + batch]).to(loaded.device) for i in range(0, len(tensors), batch)]


def finished(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (a GPU runs behind the Python that queues its kernels)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_loop(module: torch.nn.Module, batches: list[torch.Tensor]) -> None:
    """Stock autograd: one forward pass and one input-only backward pass per batch, top-1 class."""
    for x in batches:
        leaf = x.detach().requires_grad_()
        score = module(leaf).max(dim=1).values.sum()
        torch.autograd.grad(score, leaf)


def limit_loop(module: torch.nn.Module, batches: list[torch.Tensor], method: str) -> None:
    """The model's own work through the library: ``saliency.explain`` per batch, top-1 class."""
    for x in batches:
        saliency.explain(module, x, method)


class Variants:
    """Each variant as ``run(paths) -> seconds``; the batch-job ones write to a fresh DEST, removed afterwards."""

    def __init__(self, model: str, method: str, batch: int, shard: int, scratch: Path, ray_workers: list[int],
                 device: str = "cpu") -> None:
        self.model, self.method, self.batch, self.shard, self.scratch = model, method, batch, shard, scratch
        self.device = device
        start = time.perf_counter()
        self.loaded = load_model(model, device=device, **model_options(model))
        self.load_seconds = time.perf_counter() - start
        self.cache: dict[int, list[torch.Tensor]] = {}
        self.stages: dict[int, list[dict[str, float]]] = defaultdict(list)  # images -> the local runs' shares
        self.table: dict[str, Callable[[list[str]], float]] = {
            "bare autograd": self.bare, "limit": self.limit, "local": lambda p: self.job(p, "local", 1)}
        for workers in ray_workers:
            self.table[f"ray {workers}"] = lambda p, w=workers: self.job(p, "ray", w)

    def _batches(self, paths: list[str]) -> list[torch.Tensor]:
        if len(paths) not in self.cache:
            self.cache[len(paths)] = prepared_batches(self.loaded, paths, self.batch)
        return self.cache[len(paths)]

    def bare(self, paths: list[str]) -> float:
        batches = self._batches(paths)
        start = time.perf_counter()
        bare_loop(self.loaded.module, batches)
        finished(self.loaded.device)
        return time.perf_counter() - start

    def limit(self, paths: list[str]) -> float:
        batches = self._batches(paths)
        start = time.perf_counter()
        limit_loop(self.loaded.module, batches, self.method)
        finished(self.loaded.device)
        return time.perf_counter() - start

    def gpus(self, workers: int) -> float:
        """GPUs per Ray model actor: the one GPU shared out, where the model is on one."""
        return 1 / workers if self.loaded.device.type == "cuda" else 0

    def job(self, paths: list[str], engine: str, workers: int) -> float:
        folder = Path(tempfile.mkdtemp(prefix=f"dest-{engine}{workers}-", dir=self.scratch))
        timer = StageSeconds() if engine == "local" else None
        try:
            start = time.perf_counter()
            summary = explain_dataset(paths, str(folder / "maps.parquet"), model=self.model, methods=[self.method],
                                      engine=engine, batch_size=self.batch, shard_size=self.shard, workers=workers,
                                      stage=timer, device=self.device, gpus_per_worker=self.gpus(workers),
                                      **model_options(self.model))
            seconds = time.perf_counter() - start
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        if timer is not None:
            self.stages[len(paths)].append({name: t / seconds for name, t in timer.seconds.items()})
        if summary.explained != len(paths) or not summary.ok or summary.skipped:
            raise RuntimeError(f"{engine} engine ({workers} workers): explained {summary.explained} of "
                               f"{len(paths)}, skipped {summary.skipped}, failed {summary.failed[:3]}, "
                               f"missing {summary.missing[:3]}")
        return seconds


@dataclass
class Result:
    """One model's figures: seconds per round for every variant, on all the images and on one batch of them."""

    model: str
    full: dict[str, list[float]]
    small: dict[str, list[float]]
    load_seconds: float
    stages: list[dict[str, float]] = field(default_factory=list)  # the local runs on all images: share per stage

    def median(self, variant: str, small: bool = False) -> float:
        return statistics.median((self.small if small else self.full)[variant])


def measure(variants: Variants, paths: list[str], repeats: int, seed: int) -> Result:
    """Every variant on all of ``paths`` and on its first batch, once per round in a shuffled order, after a warm-up."""
    sizes = {"full": paths, "small": paths[:variants.batch]}
    if len(paths) <= variants.batch:
        del sizes["small"]
    for run in variants.table.values():  # warm-up: imports, thread pools, Ray Data's first execution
        run(sizes.get("small", paths))
        gc.collect()
    times: dict[str, dict[str, list[float]]] = {size: {name: [] for name in variants.table} for size in sizes}
    order, shuffle = [(name, size) for name in variants.table for size in sizes], random.Random(seed).shuffle
    for round_ in range(repeats):
        shuffle(order)
        for name, size in order:
            times[size][name].append(variants.table[name](sizes[size]))
            gc.collect()
        print(f"  round {round_ + 1}/{repeats}: " +
              ", ".join(f"{n} {times['full'][n][-1]:.2f} s" for n in variants.table), file=sys.stderr, flush=True)
    stages = variants.stages[len(paths)]
    if "small" not in sizes:  # the warm-up ran on all the images too
        stages = stages[1:]
    return Result(variants.model, times["full"], times.get("small", {}), variants.load_seconds, stages)


def start_ray(cpus: int) -> tuple[object, dict[int, str]]:
    """A local Ray on ``cpus`` CPUs, and for each worker count the CPUs and torch threads a model actor gets."""
    import ray
    import ray.data

    from saliency.batch.ray_engine import torch_threads, worker_cpus

    # address="local": always a new Ray of our own, never a cluster found on the machine (RAY_ADDRESS,
    # `ray start`): its CPUs are what the figures are for
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # no "Starting execution of Dataset ..." per run
    # "... concurrent actors/tasks ... only received 1 input(s)": fewer shards than workers, said once in the report
    warnings.filterwarnings("ignore", message=r"The (minimum|maximum) number of concurrent")

    @ray.remote
    class Probe:
        def threads(self) -> int:
            return torch.get_num_threads()

    actors: dict[int, str] = {}
    for workers in (1, 2):
        share = worker_cpus(ray.cluster_resources().get("CPU", 1.0), workers)
        probe = Probe.options(num_cpus=share).remote()
        actors[workers] = (f"{share:g} CPU (Ray's default: {ray.get(probe.threads.remote())} torch thread(s)), "
                           f"set to {torch_threads(ray.cluster_resources().get('CPU', 1.0), workers)} torch thread(s) each")
        ray.kill(probe)
    return ray, actors


def touch_seconds_per_gb(megabytes: int = 512) -> tuple[float, float]:
    """Seconds per GB to write memory this process never used, and the same amount again at once after freeing it.

    A fresh process (each Ray model actor) pays the first for all the memory of its first batch. Where the
    host takes back memory a virtual machine frees (free page reporting) it is many times the second."""
    import numpy as np

    seconds = []
    for _ in range(2):  # above malloc's mmap threshold: freed to the kernel, taken afresh the second time
        start = time.perf_counter()
        block = np.ones(megabytes * 2**20 // 8)
        seconds.append(time.perf_counter() - start)
        del block
    fresh, again = seconds
    return fresh * 1024 / megabytes, again * 1024 / megabytes


def table(head: list[str], rows: list[list[str]]) -> None:
    print("| " + " | ".join(head) + " |")
    print("|" + " --- |" * len(head))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()


def report(results: list[Result], args: argparse.Namespace, actors: dict[int, str] | None) -> None:
    n, b = args.images, args.batch_size
    cpus = available_cores()
    print("\n## Batch job against the bare loop\n")
    device = (f"; model on {torch.cuda.get_device_name(args.device)}, CUDA {torch.version.cuda}"
              if args.device.startswith("cuda") else "; model on the CPU")
    print(f"Machine: {platform.system()} {platform.machine()}, {os.cpu_count()} CPUs ({cpus} usable){device}, "
          f"torch {torch.__version__} with {torch.get_num_threads()} intra-op threads in this process"
          + (f", OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}" if "OMP_NUM_THREADS" in os.environ else "") + "; "
          + ("freed memory kept for reuse (saliency.memory), as by the saliency command" if args.memory_kept
             else "glibc's malloc defaults") + f"; the GIL handed on every {sys.getswitchinterval() * 1000:g} ms"
          + (f"; decoding in {args.decode_in}" if args.decode_in else "")
          + f"; writing memory never used takes {args.touch[0]:.2f} s/GB ({args.touch[1]:.2f} s/GB again at once "
            "after freeing it).")
    if actors is not None:
        import ray

        print(f"Ray {ray.__version__}, local, {args.ray_cpus} CPUs; a model actor gets, with 1 worker: {actors[1]}; "
              f"with 2 workers: {actors[2]}.")
    print(f"{n} JPEGs {args.size}x{args.size}, batch {b}, shard {args.shard_size}, method {args.method}, "
          f"top-1 class; median of {args.repeats} interleaved rounds.\n")
    columns = [v for v in VARIANTS if all(v in r.full for r in results)]
    names = {"bare autograd": "bare autograd fwd+bwd", "limit": f"limit: explain({args.method})",
             "local": "local engine", "ray 1": "Ray, 1 worker", "ray 2": "Ray, 2 workers"}
    ray_columns = [w for w in (1, 2) if f"ray {w}" in columns]

    def ratios(rate: Callable[[Result, str], float | None]) -> None:
        bare = "bare autograd" in columns
        head = ["model"] + ["limit / bare"] * bare + [f"local / limit (target ≥ {TARGET_LOCAL})"]
        head += [f"Ray {w} / local (target ≥ {TARGET_RAY})" for w in ray_columns]
        rows = []
        for r in results:
            row = [r.model] + ([verdict(rate(r, "limit"), rate(r, "bare autograd"))] if bare else [])
            row += [verdict(rate(r, "local"), rate(r, "limit"), TARGET_LOCAL)]
            row += [verdict(rate(r, f"ray {w}"), rate(r, "local"), TARGET_RAY) for w in ray_columns]
            rows.append(row)
        table(head, rows)

    print(f"End to end, images/s over {n} images (median; slowest–fastest round in brackets):\n")
    table(["model"] + [names[c] for c in columns],
          [[r.model] + [f"{n / r.median(c):.3g} ({n / max(r.full[c]):.3g}–{n / min(r.full[c]):.3g})" for c in columns]
           for r in results])
    print("Ratios of those images/s:\n")
    ratios(lambda r, c: n / r.median(c))
    if all(r.stages for r in results):
        print("Where the local engine's driving thread spent its time, as shares of the run (median): the model's "
              "work and making the rows, waiting for decoding, waiting for writing, and the rest (loading the model, "
              "listing sources, opening DEST):\n")
        stages = ("explain", "decode", "write")
        table(["model", "explain", "waiting for decoding", "waiting for writing", "rest"],
              [[r.model] + [f"{statistics.median(s.get(k, 0.0) for s in r.stages):.2f}" for k in stages]
               + [f"{statistics.median(1 - sum(s.values()) for s in r.stages):.2f}"] for r in results])
    if not all(r.small for r in results):
        return
    print(f"Fixed costs: seconds for a run on one batch ({b} images; median), and for loading the model once in "
          "this process (part of every engine run). A Ray run also starts its own model actors (a process each, "
          "torch's import, the model's loading):\n")
    table(["model"] + [names[c] for c in columns] + ["model loading"],
          [[r.model] + [f"{r.median(c, small=True):.2f}" for c in columns] + [f"{r.load_seconds:.2f}"]
           for r in results])
    print(f"Steady rate, images/s once running: the {n - b} images beyond the first batch over the time they add, "
          f"({n} - {b}) / (t[{n}] - t[{b}]) (— where the difference is under a tenth of t[{n}], lost in the noise):\n")
    steady = {(r.model, c): steady_rate(n, b, r.median(c), r.median(c, small=True)) for r in results for c in columns}
    table(["model"] + [names[c] for c in columns],
          [[r.model] + [f"{steady[r.model, c]:.3g}" if steady[r.model, c] else "—" for c in columns]
           for r in results])
    print("Ratios of the steady rates:\n")
    ratios(lambda r, c: steady[r.model, c])
    shards = -(-n // args.shard_size)
    if 2 in ray_columns and shards < 2:
        print(f"Note: {n} images make {shards} shard of {args.shard_size}: the second Ray worker had no work "
              "(use more images or a smaller --shard-size).\n")


def steady_rate(n: int, b: int, full: float, small: float) -> float | None:
    """Images/s beyond the first batch, or None where the time they add is lost in the noise."""
    added = full - small
    return (n - b) / added if added > 0.1 * full else None


def verdict(rate: float | None, baseline: float | None, target: float | None = None) -> str:
    """``rate / baseline``, and whether it meets ``target``."""
    if not rate or not baseline:
        return "—"
    value = rate / baseline
    return f"{value:.2f}" if target is None else f"{value:.2f} ({'met' if value >= target else 'NOT met'})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256, help="JPEGs to explain per run (default 256)")
    parser.add_argument("--size", type=int, default=224, help="side of the square JPEGs (default 224)")
    parser.add_argument("--models", default="resnet50,demo", help="comma-separated (default resnet50,demo)")
    parser.add_argument("--batch-size", type=int, default=16, help="model batch (default 16)")
    parser.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE,
                        help=f"images per Parquet shard (default {DEFAULT_SHARD_SIZE}, the job's default)")
    parser.add_argument("--method", default="guided", help="saliency method (default guided)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--skip-ray", action="store_true", help="the local engine only; Ray is not started")
    parser.add_argument("--skip-bare", action="store_true",
                        help="leave out the bare-autograd loop (a reference only: the targets are against the limit)")
    parser.add_argument("--ray-cpus", type=int, default=2, help="CPUs of the local Ray (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the round order")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="the model's device (default: cuda where a GPU is seen, else cpu)")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="torch's CPU threads in this process (default: torch's own choice, one per core)")
    parser.add_argument("--decode-in", choices=("threads", "processes"), default=None,
                        help="where the local engine decodes beside the model (default: threads, or "
                             "$SALIENCY_DECODE_IN)")
    parser.add_argument("--switch-interval", type=float, default=None, metavar="MS",
                        help="how often Python hands the GIL between threads, in ms (default: Python's, 5)")
    parser.add_argument("--malloc-defaults", action="store_true",
                        help="leave glibc's malloc as it is (the saliency command keeps freed memory for reuse: "
                             "saliency.memory)")
    args = parser.parse_args()
    if args.images < 1 or args.batch_size < 1 or args.repeats < 1:
        parser.error("--images, --batch-size and --repeats must be at least 1")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    if args.decode_in:
        os.environ["SALIENCY_DECODE_IN"] = args.decode_in
    if args.switch_interval:
        sys.setswitchinterval(args.switch_interval / 1000)
    args.memory_kept = False if args.malloc_defaults else reuse_freed_memory()  # as the saliency command does
    started = time.perf_counter()
    args.touch = touch_seconds_per_gb()  # before the runs free large blocks, whose pages stay warm for seconds
    scratch = Path(tempfile.mkdtemp(prefix="saliency-bench-batch-"))
    ray = actors = None
    try:
        paths = write_images(scratch / "images", args.images, args.size)
        if not args.skip_ray:
            ray, actors = start_ray(args.ray_cpus)
        results = []
        for model in models:
            print(f"{model}: ...", file=sys.stderr, flush=True)
            torch.manual_seed(0)
            variants = Variants(model, args.method, args.batch_size, args.shard_size, scratch,
                                [] if args.skip_ray else [1, 2], args.device)
            if args.skip_bare:
                del variants.table["bare autograd"]
            results.append(measure(variants, paths, args.repeats, args.seed))
            del variants
            gc.collect()
        report(results, args, actors)
    finally:
        if ray is not None:
            ray.shutdown()
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"\n(whole run: {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
