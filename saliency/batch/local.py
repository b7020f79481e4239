"""The in-process engine: threads decode ahead of the model and write behind it, like a DataLoader."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from saliency.batch.sources import Source
from saliency.batch.store import Store
from saliency.batch.work import Decoded, JobSpec, Rows, decode, explain_decoded, write_pictures
from saliency.models import LoadedModel

Progress = Callable[[int, int], None]
"""``progress(images, failed)``: called as each shard is written."""


def run_local(spec: JobSpec, loaded: LoadedModel, sources: Iterable[Source], store: Store, shard_size: int,
              progress: Progress, decode_threads: int = 2) -> tuple[int, list[str]]:
    """Explain ``sources`` into ``store`` with ``loaded`` (``spec``'s model): returns (images explained, sources that failed)."""
    classes = spec.classes(loaded)
    preprocessing = loaded.preprocessing
    explained, failed = 0, []
    with ThreadPoolExecutor(decode_threads, thread_name_prefix="decode") as decoders, \
            ThreadPoolExecutor(1, thread_name_prefix="write") as writer:
        writing: Future | None = None
        shards = _chunks(sources, shard_size)
        for shard in _prefetched(shards, lambda s: decoders.submit(decode, s, preprocessing, spec.max_pixels)):
            rows = explain_decoded(loaded, [f.result() for f in shard], spec, classes)
            if writing is not None:
                _account(writing.result(), progress)  # one shard in memory while the next is explained
            writing = writer.submit(_write, store, rows, spec, loaded.name)
            explained += rows.explained
            failed += rows.failed
        if writing is not None:
            _account(writing.result(), progress)
    return explained, failed


def _write(store: Store, rows: Rows, spec: JobSpec, model_name: str) -> Rows:
    write_pictures(rows.rows, spec, model_name)  # pictures first: a shard in DEST means its pictures exist
    store.write(rows.rows)
    return rows


def _account(rows: Rows, progress: Progress) -> None:
    progress(rows.explained + len(rows.failed), len(rows.failed))


def _prefetched(shards: Iterator[list[Source]], submit: Callable[[Source], Future[Decoded]],
                depth: int = 2) -> Iterator[list[Future[Decoded]]]:
    """Shards of decode futures, ``depth`` shards submitted ahead of the one being explained."""
    ahead: deque[list[Future[Decoded]]] = deque()
    for shard in shards:
        ahead.append([submit(s) for s in shard])
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

