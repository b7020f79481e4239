"""The work behind ``POST /v1/explain``: decode → prepare → explain → render → encode, timed."""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from saliency.api.batching import Batcher
from saliency.api.errors import RequestError
from saliency.api.parsing import ExplainRequest
from saliency.models import LoadedModel
from saliency.pipeline import StageSeconds, prepare, render, target_of
from saliency.render import DEFAULT_CMAP, DEFAULT_PERCENTILE, convention
from saliency.units import Unit

TOP_PREDICTIONS = 5


OVERHEAD_STAGES = ("decode", "preprocess", "render", "encode")


class Timer(StageSeconds):
    """Seconds spent per stage; ``explain`` is the model's own time, the rest is service overhead.

    ``overhead`` is the overhead stages' wall time, ``overhead_cpu`` the CPU time this request's
    thread spent in them: on a busy machine the first also counts waiting for a core.
    """

    def __init__(self) -> None:
        super().__init__()
        self.started = time.perf_counter()
        self.batch_images = 0  #: images in the model call this request shared (its own included)
        self.overhead_cpu = 0.0

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """The stage timed as by :class:`StageSeconds`, and this thread's CPU time in it counted if it is overhead."""
        cpu = time.thread_time()
        try:
            with self(name):
                yield
        finally:
            if name in OVERHEAD_STAGES:
                self.overhead_cpu += time.thread_time() - cpu

    def report(self) -> dict[str, float]:
        s = dict(self.seconds)
        overhead = sum(v for k, v in s.items() if k in OVERHEAD_STAGES)
        total = time.perf_counter() - self.started
        return {**{k: round(v, 6) for k, v in s.items()}, "overhead": round(overhead, 6),
                "overhead_cpu": round(self.overhead_cpu, 6), "total": round(total, 6)}


@dataclass
class ServicePicture:
    """One rendered map: which image, class and method it explains, its PNG and its raw values."""

    image: int
    method: str
    target: int | Unit
    png: bytes
    raw: np.ndarray


@dataclass
class Outcome:
    """Everything a response needs."""

    request: ExplainRequest
    sizes: list[tuple[int, int]]
    boxes: list[tuple[int, int, int, int]]
    probabilities: torch.Tensor            # [B, classes]
    targets: list[list[int | Unit]]        # per image: the classes (or units, at their place) explained, in order
    pictures: list[ServicePicture]
    warnings: list[str]
    activations: dict[str, int]
    method_seconds: dict[str, float]
    timer: Timer
    unit_values: list[list[float | None]] = field(default_factory=list)  # per image and target: a unit's value


def run(model: LoadedModel, req: ExplainRequest, batcher: Batcher, max_pixels: int,
        max_render_pixels: int | None = None) -> Outcome:
    """Explain every image of ``req`` with ``model`` (a loaded model) through the pipeline.

    Refused before any work when its pictures, drawn at each image's size (the crop the model saw,
    or the whole image for overlays), would hold more than ``max_render_pixels`` pixels in all.
    The model call goes through ``batcher``, shared with other requests queued there (each keeps its
    own target or top-k); decoding, rendering and encoding stay in the calling thread.
    """
    timer = Timer()
    fixed_target = None if req.target is None else target_of(model, req.target)
    prepared = []
    with batcher.arriving():  # refused at once when the queue is full
        for data in req.images:  # one at a time, so that a request over the drawing limit stops early
            prepared.append(prepare(model, data, max_pixels=max_pixels, stage=timer.stage))
            if max_render_pixels is not None:
                _check_drawing(req, prepared, len(model.labels), max_render_pixels)
        answer = batcher.explain(prepared, req.methods, fixed_target, req.topk, dict(req.options))
    explained, report = answer.explained, answer.report
    timer.seconds["queue"] += answer.waited
    timer.seconds["explain"] += sum(report.seconds.values())
    timer.batch_images = answer.batch_images
    pictures = []
    for drawn in render(explained, req.methods, req.style, alpha=req.alpha, cmap=DEFAULT_CMAP,
                        percentile=DEFAULT_PERCENTILE, stage=timer.stage):
        with timer.stage("encode"):
            raw = explained[drawn.image].maps[drawn.rank][drawn.method].numpy()
            pictures.append(ServicePicture(drawn.image, drawn.method, drawn.target, drawn.png(), raw))
    return Outcome(request=req, sizes=[p.image.size for p in prepared], boxes=[tuple(p.box) for p in prepared],
                   probabilities=torch.stack([e.probabilities for e in explained]),
                   targets=[e.targets for e in explained], unit_values=[e.unit_values for e in explained],
                   pictures=pictures, warnings=report.warnings,
                   activations=report.activations, method_seconds=report.seconds, timer=timer)


def to_json(outcome: Outcome, model: LoadedModel) -> dict[str, Any]:
    """The JSON body: per image, its predictions and, per explained class, one PNG data URI per method."""
    req = outcome.request
    labels = model.labels
    timer = outcome.timer
    results = []
    with timer.stage("encode"):
        for i, probs in enumerate(outcome.probabilities):
            top = probs.topk(min(TOP_PREDICTIONS, len(probs)))
            explanations = []
            for k, target in enumerate(outcome.targets[i]):
                maps = {}
                for p in outcome.pictures:
                    if p.image == i and p.target == target:
                        entry = {"png": "data:image/png;base64," + base64.b64encode(p.png).decode("ascii")}
                        if req.raw == "npy":
                            entry["npy"] = encode_npy(p.raw)
                        maps[p.method] = entry
                explained = (_unit(target, outcome.unit_values[i][k]) if isinstance(target, Unit)
                             else _class(target, probs, labels))
                explanations.append({"target": explained, "maps": maps})
            results.append({
                "name": req.names[i], "width": outcome.sizes[i][0], "height": outcome.sizes[i][1],
                "box": [int(v) for v in outcome.boxes[i]],
                "predictions": [_class(int(c), probs, labels) for c in top.indices],
                "explanations": explanations,
            })
    timing = timer.report()
    return {
        "model": model.name,
        "methods": list(req.methods),
        "style": req.style,
        "convention": convention(req.style, alpha=req.alpha),
        "attribution": "raw maps are the signed gradient-like attribution with respect to the model input "
                       "(shape [channels, height, width] after preprocessing), float32",
        "results": results,
        "warnings": outcome.warnings,
        "activations": outcome.activations,
        "timing": {**timing, "methods": {k: round(v, 6) for k, v in outcome.method_seconds.items()},
                   "batch_images": timer.batch_images},
    }


def encode_npy(array: np.ndarray) -> str:
    """Base64 of the ``.npy`` file of ``array`` (float32): ``np.load(io.BytesIO(base64.b64decode(s)))``."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _class(index: int, probabilities: torch.Tensor, labels: Sequence[str]) -> dict[str, Any]:
    label = labels[index] if 0 <= index < len(labels) else str(index)
    return {"index": index, "label": label, "probability": round(float(probabilities[index]), 6)}


def _unit(unit: Unit, value: float | None) -> dict[str, Any]:
    """A unit explained, at its place in the image: ``@max`` comes back as the row and column it chose."""
    position = list(unit.position) if isinstance(unit.position, tuple) else None
    return {"unit": str(unit), "label": str(unit), "layer": unit.layer, "channel": unit.channel,
            "position": position, "value": None if value is None else round(float(value), 6)}


def _check_drawing(req: ExplainRequest, prepared: list, classes: int, limit: int) -> None:
    per_map = 0
    for p in prepared:
        x0, y0, x1, y1 = (0, 0, *p.image.size) if req.style == "overlay" else p.box
        per_map += (x1 - x0) * (y1 - y0)
    maps = (1 if req.target is not None else min(req.topk, classes)) * len(req.methods)
    if per_map * maps > limit:
        raise RequestError(f"this request would draw {per_map * maps} pixels of pictures ({maps} maps per image, "
                           f"each at the image's size); this server draws at most {limit}: send smaller images, "
                           "or fewer images, classes or methods")
