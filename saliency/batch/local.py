"""The local engine: threads (or processes) decode ahead of the model and threads write behind it, like a
DataLoader (or, where the model takes every core, between its batches)."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass

import torch

from saliency.batch.sources import Source
from saliency.batch.store import Store
from saliency.batch.decoding import Decoded, decode_all
from saliency.batch.work import JobSpec, Rows, explain_decoded, write_pictures
from saliency.errors import OptionError
from saliency.models import LoadedModel
from saliency.pipeline import Stage, no_stage

Progress = Callable[[int, int], None]
"""``progress(images, failed)``: called as each shard is written."""


def run_local(spec: JobSpec, loaded: LoadedModel, sources: Iterable[Source], store: Store, shard_size: int,
              progress: Progress, stage: Stage = no_stage) -> tuple[int, list[str]]:
    """Explain ``sources`` into ``store`` with ``loaded`` (``spec``'s model); returns (images explained, sources
    that failed).

    ``stage(name)`` wraps what the driving thread does: ``"decode"`` and ``"write"`` (waiting for those
    stages) and ``"explain"`` (the model's work and making the rows), e.g. to time each.
    """
    classes = spec.classes(loaded)
    preprocessing = loaded.preprocessing
    plan = plan_threads(loaded)
    explained, failed = 0, []
    with _decoders(plan) as decoders, ThreadPoolExecutor(plan.write_threads, thread_name_prefix="write") as writers:
        writing: deque[Future[Rows]] = deque()
        shards = _chunks(sources, shard_size)
        submit = lambda group: decoders.submit(decode_all, group, preprocessing, spec.max_pixels)  # noqa: E731
        # a process decodes a model batch per call (fewer, larger messages); a thread one picture
        group = spec.batch_size if plan.decode_processes else 1
        for shard in _prefetched(shards, submit, group, depth=2 if plan.beside_model else 0):
            with stage("decode"):
                decoded = [d for f in shard for d in f.result()]
            if not plan.beside_model:  # the last shard was written while this one decoded
                with stage("write"):
                    _settle(writing, 0, progress)
            with stage("explain"):
                rows = explain_decoded(loaded, decoded, spec, classes)
            with stage("write"):
                _settle(writing, plan.write_threads - 1, progress)  # at most one shard per writer in memory
            writing.append(writers.submit(_write, store, rows, spec, loaded.name))
            explained += rows.explained
            failed += rows.failed
        with stage("write"):
            _settle(writing, 0, progress)
    return explained, failed


@dataclass(frozen=True)
class ThreadPlan:
    """Where decoding runs: ``beside_model`` (while the model works) or between its batches, on ``decode_threads``
    (processes where ``decode_processes``); ``write_threads`` shards are written at once."""

    beside_model: bool
    decode_threads: int
    write_threads: int = 1
    decode_processes: bool = False


DECODE_IN = "SALIENCY_DECODE_IN"
"""Environment variable: ``threads`` (default) or ``processes`` decode beside the model."""


def plan_threads(loaded: LoadedModel, cores: int | None = None) -> ThreadPlan:
    """Decode and write beside the model where it leaves cores free (a GPU model, or fewer torch threads than cores).

    A CPU model on every core is another matter: its OpenMP threads wait on each other at the end of
    each operation, so a decoding thread that takes a core from one of them stalls them all (on two
    cores the demo model ran 1.8 × slower beside decoding). There the engine decodes and writes
    between model batches instead, on every core.

    Beside the model, the spare cores are shared between decoding and writing, half each: a raw
    float32 map takes about four times as long to write (zstd) as its JPEG takes to decode, and a GPU
    explains faster than one core writes (``docs/scaling.md``). Writers hold a shard each in memory.

    ``$SALIENCY_DECODE_IN=processes`` decodes beside the model in processes instead of threads (a
    model batch per call; the script that starts the job must guard its top level with
    ``if __name__ == "__main__":``). Meant for GPU models: the thread that drives a GPU needs
    Python's GIL for every kernel it issues, and decoding threads hold it for part of every picture
    (bench/README.md).
    """
    chosen = decoding_in()
    cores = cores or available_cores()
    model_threads = torch.get_num_threads() if loaded.device.type == "cpu" else 1
    spare = cores - model_threads
    if loaded.device.type == "cpu" and spare <= 0:
        return ThreadPlan(beside_model=False, decode_threads=cores)
    writers = max(1, spare // 2)
    return ThreadPlan(beside_model=True, decode_threads=max(2, spare - writers), write_threads=writers,
                      decode_processes=chosen == "processes")


def decoding_in() -> str:
    """``threads`` or ``processes``: what ``$SALIENCY_DECODE_IN`` asks for (default: threads)."""
    chosen = os.environ.get(DECODE_IN, "").strip().lower() or "threads"
    if chosen not in ("threads", "processes"):
        raise OptionError(f"${DECODE_IN} must be 'threads' or 'processes', got {chosen!r}")
    return chosen


def _decoders(plan: ThreadPlan) -> Executor:
    """The pool that decodes: threads, or fresh processes (spawned: no fork of this process's threads) that end
    when this process does, however it ends."""
    if not plan.decode_processes:
        return ThreadPoolExecutor(plan.decode_threads, thread_name_prefix="decode")
    return ProcessPoolExecutor(plan.decode_threads, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_end_with_parent, initargs=(os.getpid(),))


def _end_with_parent(parent: int, interval: float = 1.0) -> None:
    """In a decoding process: exit once the job's process ``parent`` is gone (killed, even with SIGKILL: this process
    is then re-parented), also when that happened while this one was still starting."""
    if os.getppid() != parent:
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os._exit(1)

    threading.Thread(target=watch, name="watch-parent", daemon=True).start()


def available_cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _write(store: Store, rows: Rows, spec: JobSpec, model_name: str) -> Rows:
    write_pictures(rows.rows, spec, model_name)  # pictures first: a shard in DEST means its pictures exist
    store.write(rows.rows)
    return rows


def _settle(writing: deque[Future[Rows]], keep: int, progress: Progress) -> None:
    """Wait for the oldest shards being written until at most ``keep`` are left, reporting each."""
    while len(writing) > keep:
        rows = writing.popleft().result()
        progress(rows.explained + len(rows.failed), len(rows.failed))


def _prefetched(shards: Iterator[list[Source]], submit: Callable[[list[Source]], Future[list[Decoded]]],
                group: int = 1, depth: int = 2) -> Iterator[list[Future[list[Decoded]]]]:
    """Shards of decode futures, one per ``group`` of sources, ``depth`` shards submitted ahead of the one being
    explained."""
    ahead: deque[list[Future[list[Decoded]]]] = deque()
    for shard in shards:
        ahead.append([submit(g) for g in _chunks(shard, group)])
        if len(ahead) > depth:
            yield ahead.popleft()
    while ahead:
        yield ahead.popleft()


def _chunks(items: Iterable[Source], size: int) -> Iterator[list[Source]]:
    chunk: list[Source] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk

