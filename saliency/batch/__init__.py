"""Explain a whole dataset into a Parquet dataset, resumably, in this process or on a Ray cluster.

>>> from saliency.batch import explain_dataset
>>> summary = explain_dataset(["photos/"], "maps.parquet", model="resnet50", methods=["guided"], topk=3)
>>> summary.explained, summary.failed
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from saliency.batch.sources import Source, SourceError, list_sources, printable, source_key
from saliency.batch.store import Store, StoreError
from saliency.errors import OptionError
from saliency.images import MAX_PIXELS
from saliency.methods import RULE_METHODS, resolve_methods, resolve_options

if TYPE_CHECKING:  # the work itself (torch, the models) is imported when a job starts, not for `--help`
    from saliency.batch.work import JobSpec
    from saliency.models import LoadedModel
    from saliency.pipeline import Stage

ENGINES = ("local", "ray")
DEFAULT_SHARD_SIZE = 128
REDUCTIONS = ("none", "max-abs")

__all__ = ["ENGINES", "JobSpec", "Source", "SourceError", "StoreError", "Summary", "explain_dataset"]


def __getattr__(name: str) -> Any:
    """``JobSpec``, imported on first use."""
    if name == "JobSpec":
        from saliency.batch.work import JobSpec

        return JobSpec
    raise AttributeError(f"module 'saliency.batch' has no attribute {name!r}")


@dataclass
class Summary:
    """How a job ended: images explained now, sources that failed now, sources already in DEST before it."""

    explained: int = 0
    failed: list[str] = field(default_factory=list)
    skipped: int = 0
    missing: list[str] = field(default_factory=list)
    """Sources this run should have written but DEST lacks (a worker was lost): a rerun finishes them."""
    failed_before: list[str] = field(default_factory=list)
    """Sources already in DEST with an error row (not retried; see docs/batch.md)."""

    @property
    def ok(self) -> bool:
        """Every source listed has its maps in DEST: none failed, now or before, and none is missing."""
        return not self.failed and not self.missing and not self.failed_before


def explain_dataset(sources: str | os.PathLike | Sequence[str | os.PathLike], out: str | os.PathLike, *,
                    model: str | LoadedModel = "demo", methods: Sequence[str] = RULE_METHODS,
                    engine: str = "local", topk: int = 1,
                    targets: Sequence[str | int] = (), options: dict[str, str] | None = None,
                    reduce: str = "none", batch_size: int = 16, shard_size: int = DEFAULT_SHARD_SIZE,
                    png: str | os.PathLike | None = None, workers: int = 1, gpus_per_worker: float = 0,
                    address: str | None = None, device: str | None = None, max_pixels: int = MAX_PIXELS,
                    progress: Callable[[int, int, int], None] | None = None, stage: Stage | None = None,
                    **model_options) -> Summary:
    """Explain every image ``sources`` name (one SOURCE, or a sequence of them) into the Parquet dataset ``out``;
    rerun to resume.

    ``sources``: image files, folders, globs, list files, Parquet tables, URIs (see
    :func:`saliency.batch.sources.list_sources`). Sources already in ``out`` are skipped. Each image
    gives one row per explained class (``targets``: labels, indices or units such as
    ``"features.7:12@max"``; else its ``topk`` most probable); an image that
    cannot be used gives one row with ``error`` set. ``engine``: ``"local"`` (threads in this
    process) or ``"ray"`` (Ray Data; ``address`` joins a cluster, ``workers`` model actors with
    ``gpus_per_worker`` GPUs each). ``model_options``: ``weights``, ``labels``, ``input_size``,
    ``resize``, ``mean``, ``std`` as for :func:`saliency.models.load_model`.
    ``max_pixels``: larger pictures are error rows. ``progress(done, failed, total)`` hears at the start and after each shard (``total``: the sources to do now).
    ``stage(name)``: with the local engine, a context manager around what its driving thread does —
    ``"decode"`` and ``"write"`` (waiting for those stages), ``"explain"`` — e.g. a timer.
    """
    sources = [os.fspath(s) for s in ([sources] if isinstance(sources, (str, os.PathLike)) else sources)]
    targets = [targets] if isinstance(targets, (str, int)) else targets
    for name, value in (("shard_size", shard_size), ("max_pixels", max_pixels), ("workers", workers)):
        _check_count(name, value)
    spec = _spec(model, methods, topk, targets, options, reduce, batch_size, png, device, engine, model_options)
    spec = dataclasses.replace(spec, max_pixels=max_pixels)
    _check_outputs(os.fspath(out), spec.png)
    if engine == "local":
        from saliency.batch.local import decoding_in

        decoding_in()  # a bad $SALIENCY_DECODE_IN fails here, before DEST is touched
    loaded = spec.load()  # a bad model, weights file or class fails here, before any work
    from saliency.pipeline import check_units

    check_units(loaded, spec.classes(loaded).fixed)  # a unit the model lacks fails here too
    listed = list(list_sources(sources, exclude=(out, png)))  # a bad SOURCE fails here, before DEST is touched
    if engine == "ray":  # a cluster that cannot be joined, or can never run the job, fails before DEST is made
        from saliency.batch.ray_engine import check_resources, connect

        check_resources(connect(address), gpus_per_worker)
    store = Store(os.fspath(out), spec.describe(loaded))
    _make_folder(spec.png)
    with store:  # holds DEST until the job ends
        recorded = {source_key(source): failed for source, failed in store.recorded().items()}
        todo = [s for s in listed if source_key(s.id) not in recorded]
        summary = Summary(skipped=len(listed) - len(todo),
                          failed_before=[s.id for s in listed if recorded.get(source_key(s.id))])
        counts = [0, 0]

        def report(images: int, failed: int) -> None:
            counts[0] += images
            counts[1] += failed
            if progress is not None:
                progress(counts[0], counts[1], len(todo))

        report(0, 0)
        if engine == "ray":
            from saliency.batch.ray_engine import run_ray

            summary.explained, summary.failed = run_ray(spec, loaded, todo, store, shard_size, report,
                                                        workers=workers, gpus_per_worker=gpus_per_worker,
                                                        address=address)
            written = {source_key(s) for s in store.done()}  # a shard lost with a node Ray did not retry
            summary.missing = [s.id for s in todo if source_key(s.id) not in written]
        else:
            from saliency.batch.local import run_local
            from saliency.pipeline import no_stage

            summary.explained, summary.failed = run_local(spec, loaded, todo, store, shard_size, report,
                                                          stage or no_stage)
        return summary


def _check_outputs(out: str, png: str | None) -> None:
    """DEST must be named, and the pictures must not land inside it (Parquet readers would take them for shards)."""
    if not out.strip():
        raise StoreError("--out is empty; give a folder or URI for the Parquet dataset")
    if png is not None and (not png.strip() or "://" in png):
        raise OptionError(f"--png {png!r}: give a local folder for the pictures")
    for flag, name in (("--out", out), ("--png", png)):
        if name is not None and printable(name) != name:
            raise OptionError(f"{flag} {printable(name)!r} is not UTF-8 text; choose a name that is")
    if png is None:
        return
    dest, pictures = source_key(out).rstrip("/" + os.sep), source_key(png).rstrip("/" + os.sep)
    if pictures == dest or pictures.startswith((dest + "/", dest + os.sep)):
        raise OptionError(f"--png '{png}' is inside --out '{out}', where readers of the Parquet dataset would "
                          "take the pictures for shards; choose a folder outside it")


def _check_count(name: str, value: Any) -> None:
    """``value`` must be a whole number of at least 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise OptionError(f"{name} must be a whole number of at least 1, got {value!r}")


def _make_folder(png: str | None) -> None:
    """The pictures' folder, made before any work so that one that cannot be made stops the job at once."""
    if png is None:
        return
    try:
        os.makedirs(png, exist_ok=True)
    except OSError as exc:
        raise OptionError(f"cannot make --png folder '{png}': {exc.strerror or exc}") from None


def _spec(model, methods, topk, targets, options, reduce, batch_size, png, device, engine,
          model_options) -> JobSpec:
    if engine not in ENGINES:
        raise OptionError(f"unknown engine {engine!r}; choose from {', '.join(ENGINES)}")
    from saliency.batch.work import JobSpec

    if reduce not in REDUCTIONS:
        raise OptionError(f"unknown reduction {reduce!r}; choose from {', '.join(REDUCTIONS)}")
    chosen = resolve_methods(methods)
    resolve_options(chosen, options)
    _check_count("topk", topk)
    _check_count("batch_size", batch_size)
    unknown = set(model_options) - {"weights", "labels", "input_size", "resize", "mean", "std"}
    if unknown:
        raise OptionError(f"unknown model option(s) {', '.join(sorted(unknown))}")
    return JobSpec(model=model, methods=tuple(m.name for m in chosen),
                   options=tuple(sorted((k, str(v)) for k, v in (options or {}).items())),
                   targets=tuple(str(t) for t in targets), topk=topk, reduce=reduce, batch_size=batch_size,
                   png=os.fspath(png) if png is not None else None, device=device, **model_options)
