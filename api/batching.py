"""Dynamic batching across requests: one model thread per worker explains queued requests together.

Request threads decode and prepare their own images, then :meth:`Batcher.explain` queues them and
waits. The model thread takes the oldest request and every queued one that asks for the same
methods, options and kind of target, up to ``max_batch`` images, waiting at most ``delay`` seconds
(counted from the oldest request's arrival) for company while other requests are on their way
(being decoded; a lone request does not wait); it explains them in one
:func:`~saliency.pipeline.explain_prepared` call, each picture with its own target or top-k, and
hands each request its own pictures back. Rendering and encoding happen in the request threads,
so they overlap the next batch's model work.

Admission: at most ``max_queue`` requests wait for the model; one more is refused at once
(:class:`Overloaded`, a 503 with ``Retry-After``), and one that waited ``queue_timeout`` seconds
without reaching the model is refused too. With ``delay`` 0 each request is explained on its own,
in arrival order.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from contextlib import contextmanager
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from saliency.errors import SaliencyError
from saliency.models import LoadedModel
from saliency.pipeline import Classes, Explained, Report, explain_prepared
from saliency.preprocess import Prepared
from saliency.units import Unit


class Overloaded(SaliencyError):
    """The worker's queue is full, or a request waited too long for the model: retry after ``retry_after`` s."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(eq=False)  # compared by identity in the queue
class Job:
    """One request's pictures, waiting for the model."""

    key: tuple
    prepared: Sequence[Prepared]
    target: int | Unit | None
    topk: int
    enqueued: float = field(default_factory=time.perf_counter)
    done: threading.Event = field(default_factory=threading.Event)
    started: bool = False
    explained: list[Explained] | None = None
    report: Report | None = None
    error: BaseException | None = None
    waited: float = 0.0
    batch_images: int = 0


@dataclass(frozen=True)
class Answer:
    """What one request gets back: its pictures explained, the batch's report, its wait and its company."""

    explained: list[Explained]
    report: Report
    waited: float
    batch_images: int


class Batcher:
    """The model thread of one worker, with its bounded queue (see the module's docstring)."""

    def __init__(self, model: LoadedModel, *, max_batch: int, delay: float, max_queue: int,
                 queue_timeout: float, metrics: Any = None) -> None:
        self.model = model
        self.max_batch = max_batch
        self.delay = delay
        self.max_queue = max_queue
        self.queue_timeout = queue_timeout
        self.metrics = metrics
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._batch_seconds = 0.0  # the last batch's model time, for Retry-After
        self._arriving = 0         # requests on their way to the queue (decoding)
        self._busy = False
        self._local = threading.local()

    @property
    def depth(self) -> int:
        """Requests waiting for the model now."""
        return len(self._queue)

    @property
    def busy(self) -> bool:
        """Whether a model call is running now."""
        return self._busy

    @contextmanager
    def arriving(self) -> Iterator[None]:
        """Around one request's decoding and :meth:`explain`: refused at once (:class:`Overloaded`) when the
        queue is full; until it is queued, the model thread knows it is on its way and waits for it
        (up to ``delay``), while a lone request is explained at once."""
        with self._cond:
            self._refuse_if_full()
            self._arriving += 1
        self._local.arriving = True
        try:
            yield
        finally:
            if self._local.arriving:  # it never reached the queue (a bad image, say)
                self._local.arriving = False
                with self._cond:
                    self._arriving -= 1
                    self._cond.notify_all()

    def explain(self, prepared: Sequence[Prepared], methods: Sequence[str], target: int | Unit | None, topk: int,
                options: Mapping[str, Any]) -> Answer:
        """Queue one request's pictures and wait for them to be explained (with others where they fit)."""
        kind = ("unit", target) if isinstance(target, Unit) else ("target",) if target is not None else ("topk", topk)
        job = Job(key=(tuple(methods), tuple(sorted(options.items())), kind), prepared=prepared,
                  target=target, topk=topk)
        with self._cond:
            self._refuse_if_full()
            self._start()
            if getattr(self._local, "arriving", False):
                self._local.arriving = False
                self._arriving -= 1
            self._queue.append(job)
            self._observe_depth()
            self._cond.notify_all()
        if not job.done.wait(self.queue_timeout):
            with self._cond:
                if not job.started:  # still queued: give up now, rather than pile up behind the model
                    self._queue.remove(job)
                    self._observe_depth()
                    self._cond.notify_all()
                    raise Overloaded(f"the request waited {self.queue_timeout:g} s for the model, which is busy; "
                                     "retry later", self._retry_after())
            job.done.wait()  # already in a model call: it ends
        if job.error is not None:
            raise job.error
        assert job.explained is not None and job.report is not None
        return Answer(job.explained, job.report, job.waited, job.batch_images)

    # The model thread.

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name="saliency-model", daemon=True)
            self._thread.start()

    def _serve(self) -> None:
        while True:
            self._run(self._next_batch())  # keeps no reference to a batch once it is answered

    def _next_batch(self) -> list[Job]:
        """The oldest request and the queued ones that can share its model call, once full or out of time."""
        with self._cond:
            while True:
                while not self._queue:
                    self._cond.wait()
                first = self._queue[0]
                deadline = first.enqueued + self.delay
                while first in self._queue:  # it may give up waiting meanwhile (queue_timeout)
                    batch = self._companions(first)
                    images = sum(len(j.prepared) for j in batch)
                    now = time.perf_counter()
                    if self.delay <= 0 or images >= self.max_batch or now >= deadline or not self._arriving:
                        break  # full, out of time, or no other request on its way: waiting cannot help
                    self._cond.wait(deadline - now)
                if first in self._queue:
                    break
            for job in batch:
                self._queue.remove(job)
                job.started = True
                job.waited = time.perf_counter() - job.enqueued
            self._observe_depth()
            return batch

    def _companions(self, first: Job) -> list[Job]:
        batch, images = [first], len(first.prepared)
        if self.delay <= 0:
            return batch
        for job in self._queue:
            if job is first or job.key != first.key:
                continue
            if images + len(job.prepared) <= self.max_batch:
                batch.append(job)
                images += len(job.prepared)
        return batch

    def _run(self, batch: list[Job]) -> None:
        images = sum(len(j.prepared) for j in batch)
        start = time.perf_counter()
        self._busy = True
        try:
            self._explain_together(batch)
        except SaliencyError as exc:
            if len(batch) == 1:
                batch[0].error = _without_frames(exc)
            else:  # one request's fault must not fail the others: explain each on its own
                for job in batch:
                    try:
                        self._explain_together([job])
                    except SaliencyError as own:
                        job.error = _without_frames(own)
        except Exception as exc:  # reported to each waiting request, which answers 500 (and logs it)
            for job in batch:
                job.error = exc
        self._batch_seconds = time.perf_counter() - start
        self._busy = False
        if self.metrics is not None:
            self.metrics.observe_batch(images, [j.waited for j in batch])
        for job in batch:
            job.batch_images = images
            job.done.set()

    def _explain_together(self, batch: list[Job]) -> None:
        first = batch[0]
        methods, options, _ = first.key
        prepared = [p for job in batch for p in job.prepared]
        if isinstance(first.target, Unit):  # the same unit for every picture (the key says so)
            classes = Classes(fixed=(first.target,))
        elif first.target is not None:
            classes = Classes(fixed=(tuple(job.target for job in batch for _ in job.prepared),))
        else:
            classes = Classes(topk=first.topk)
        explained, report = explain_prepared(self.model, prepared, methods, classes, dict(options))
        if self.metrics is not None:
            self.metrics.observe_explanation(report.seconds, len(prepared))
        start = 0
        for job in batch:
            job.explained, job.report, job.error = explained[start:start + len(job.prepared)], report, None
            start += len(job.prepared)

    def _refuse_if_full(self) -> None:
        if len(self._queue) >= self.max_queue:
            raise Overloaded(f"this worker already holds {self.max_queue} requests waiting for the model; "
                             "retry later", self._retry_after())

    def _retry_after(self) -> int:
        """Seconds until the queue has likely drained: its batches at the last batch's pace, at least 1."""
        batches = len(self._queue) / max(1, self.max_batch) + 1
        return max(1, math.ceil(batches * self._batch_seconds))

    def _observe_depth(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(len(self._queue))


def _without_frames(exc: SaliencyError) -> SaliencyError:
    """A request's error without the model call's frames: they hold its forward graph and activations."""
    return exc.with_traceback(None)
