"""The one path from pictures to explained maps: decode → prepare → explain → render → encode.

The CLI, the HTTP service and the batch job all call these functions, so a change here reaches
all three. Each stage is a function of its own; :func:`explain_prepared` groups the pictures by
input shape and explains every class asked for from one forward pass per group.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from saliency.engine import Explanation, explain_classes
from saliency.errors import SaliencyError, TargetError
from saliency.images import MAX_PIXELS, ImageSource, open_image
from saliency.models import LoadedModel
from saliency.preprocess import Prepared, Preprocessing
from saliency.render import render_batch, to_png
from saliency.units import Unit, find_layer, looks_like_unit

Stage = Callable[[str], AbstractContextManager]
"""``stage(name)``: a context manager around each stage's work (e.g. a timer); by default nothing."""


def no_stage(name: str) -> AbstractContextManager:
    """The default :data:`Stage`: nothing around any stage."""
    return nullcontext()


class StageSeconds:
    """A :data:`Stage` that adds up the wall-clock seconds spent in each stage, by name, in ``seconds``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start


@dataclass(frozen=True)
class Classes:
    """The classes explained for every picture: the ``fixed`` ones, else each picture's ``topk`` most probable.

    An entry of ``fixed`` is one class index for every picture, or a tuple of one index per picture
    (pictures gathered from several requests, each with its own target), or a :class:`~saliency.Unit`
    for every picture.
    """

    fixed: tuple[int | tuple[int, ...] | Unit, ...] = ()
    topk: int = 1

    def fixed_for(self, pictures: Sequence[int]) -> list[int | Unit | list[int]]:
        """``fixed`` for a group of the pictures (their indices): each per-picture tuple cut to the group's."""
        return [t if isinstance(t, (int, Unit)) else [t[i] for i in pictures] for t in self.fixed]

    def per_image(self, num_classes: int) -> int:
        """How many classes each picture gets explained for (top-k stops at the model's class count)."""
        return len(self.fixed) if self.fixed else min(self.topk, num_classes)


@dataclass
class Explained:
    """One picture explained: its prepared input, class probabilities, and each explained class's raw maps.

    ``maps[k][method]``: the signed attribution for class ``targets[k]``, ``[C, H, W]`` at the
    model input's size, float32 on the CPU. A target that is a unit is the unit at its place in this
    picture (``@max`` resolved to the row and column), and ``unit_values[k]`` its value (``None``
    for a class).
    """

    prepared: Prepared
    probabilities: Tensor
    targets: list[int | Unit]
    maps: list[dict[str, Tensor]]
    unit_values: list[float | None] = field(default_factory=list)


@dataclass
class Report:
    """What the model calls said beside the maps: warnings, non-ReLU activations, seconds per pass."""

    warnings: list[str] = field(default_factory=list)
    activations: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    layer: str | None = None

    def add(self, other: "Report") -> None:
        self.warnings += [w for w in other.warnings if w not in self.warnings]
        self.activations.update(other.activations)
        for name, value in other.seconds.items():
            self.seconds[name] = self.seconds.get(name, 0.0) + value
        self.layer = self.layer or other.layer


@dataclass(frozen=True)
class Picture:
    """One drawn map: which picture (index into the explained list), which class rank and method."""

    image: int
    rank: int
    method: str
    target: int | Unit
    picture: Image.Image

    def png(self, text: Mapping[str, str] | None = None) -> bytes:
        """The picture encoded as PNG (fast compression), with optional text chunks."""
        return to_png(self.picture, dict(text) if text else None)


def target_of(model: LoadedModel, text: str | int) -> int | Unit:
    """What a front end's target names: a class (a label or an index), or a unit ``LAYER:CHANNEL[@ROW,COL|@max]``.

    A label that holds a ``:`` stays the label; a unit's layer is checked against the model here.
    """
    try:
        return model.class_index(text)
    except TargetError:
        if not (isinstance(text, str) and looks_like_unit(text)):
            raise
    unit = Unit.parse(text)
    find_layer(model.module, unit.layer)
    return unit


def check_units(model: LoadedModel, targets: Sequence[int | Unit]) -> None:
    """Before long work: the units among ``targets`` checked (channel, position, layer shape) on a blank input
    of the model's size, so that a unit the model lacks fails at once, in one line."""
    units = [t for t in targets if isinstance(t, Unit)]
    if units:
        blank = torch.zeros((1, *model.preprocessing.shape), device=model.device)
        explain_classes(model.module, blank, "vanilla", units)


def target_label(target: int | Unit, labels: Sequence[str]) -> str:
    """A target's name: the class's label, or the unit's string form."""
    return str(target) if isinstance(target, Unit) else labels[target] if 0 <= target < len(labels) else str(target)


def prepare(model: LoadedModel | Preprocessing, source: ImageSource, *, max_pixels: int = MAX_PIXELS,
            stage: Stage = no_stage) -> Prepared:
    """Decode ``source`` (a path, bytes or a binary file) and turn it into ``model``'s input.

    ``model`` may be just its :class:`~saliency.preprocess.Preprocessing` (what a decode worker holds).
    """
    with stage("decode"):
        image = open_image(source, max_pixels=max_pixels)
    with stage("preprocess"):
        return model.prepare(image)


def prepare_each(model: LoadedModel, sources: Sequence[ImageSource], *,
                 max_pixels: int = MAX_PIXELS) -> list[Prepared | SaliencyError]:
    """:func:`prepare` for each source; a source that cannot be used gives its error in its place."""
    out: list[Prepared | SaliencyError] = []
    for source in sources:
        try:
            out.append(prepare(model, source, max_pixels=max_pixels))
        except SaliencyError as exc:
            out.append(exc)
    return out


def groups_by_shape(prepared: Sequence[Prepared]) -> list[list[int]]:
    """Indices of ``prepared`` grouped by input shape (each group can be one batch), in order of first appearance."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, p in enumerate(prepared):
        groups.setdefault(tuple(p.tensor.shape[1:]), []).append(i)
    return list(groups.values())


def explain_prepared(model: LoadedModel, prepared: Sequence[Prepared], methods: Sequence[str],
                     classes: Classes = Classes(), options: Mapping[str, Any] | None = None, *,
                     progress: Callable[[str, int, int], None] | None = None,
                     stage: Stage = no_stage) -> tuple[list[Explained], Report]:
    """Explain each prepared picture for ``classes`` with ``methods``: one forward pass per input shape.

    Every further class costs only the methods' input-only backward passes (see
    :func:`saliency.explain_classes`). Results come back in the order of ``prepared``. With no
    ``methods`` it only predicts: one forward pass without gradients, and empty ``maps``.
    """
    return start_explaining(model, prepared, methods, classes, options, progress=progress, stage=stage)()


Finish = Callable[[], tuple[list[Explained], Report]]
"""Waits for an explanation :func:`start_explaining` queued and returns it as :func:`explain_prepared` does."""


def start_explaining(model: LoadedModel, prepared: Sequence[Prepared], methods: Sequence[str],
                     classes: Classes = Classes(), options: Mapping[str, Any] | None = None, *,
                     progress: Callable[[str, int, int], None] | None = None,
                     stage: Stage = no_stage) -> Finish:
    """:func:`explain_prepared` in two halves: queue the model's work and the copies of its results to the CPU,
    and return the function that waits for them.

    On a GPU the work runs on while the caller goes on: a batch job starts its next batch before it
    finishes the last, so the GPU does not wait for the Python around each batch (on the CPU the
    work is done here, and finishing only assembles the result).
    """
    count = classes.per_image(model.num_classes)
    groups = []
    for indices in groups_by_shape(prepared):
        x = _on_device([prepared[i].tensor for i in indices], model.device)
        if not methods:
            with stage("explain"):
                start = time.perf_counter()
                probabilities, targets = _predict(model, x, classes, indices, count)
            groups.append((indices, None, (probabilities, targets, time.perf_counter() - start)))
            continue
        with stage("explain"):
            results = explain_classes(model.module, x, methods, classes.fixed_for(indices),
                                      topk=None if classes.fixed else count, options=options, progress=progress)
        groups.append((indices, results, [results[0].probabilities.float(), *(r.targets for r in results),
                                          *(r[m].float() for r in results for m in methods)]))
    queued = _queued_work(model.device)

    def finish() -> tuple[list[Explained], Report]:
        explained: list[Explained | None] = [None] * len(prepared)
        report = Report()
        for indices, results, outputs in groups:
            if results is None:
                probabilities, targets, seconds = outputs
                for row, i in enumerate(indices):
                    explained[i] = Explained(prepared=prepared[i], probabilities=probabilities[row],
                                             targets=targets[row], unit_values=[None] * len(targets[row]),
                                             maps=[{} for _ in targets[row]])
                report.add(Report(seconds={"forward": seconds}))
                continue
            with stage("explain"):
                probabilities, *rest = _to_host(outputs, queued)
            targets = [_targets_of(r, t) for r, t in zip(results, rest)]   # [classes][B]
            host_maps = iter(rest[len(results):])
            maps = [{m: next(host_maps) for m in methods} for _ in results]
            for row, i in enumerate(indices):
                explained[i] = Explained(prepared=prepared[i], probabilities=probabilities[row],
                                         targets=[t[row][0] for t in targets], unit_values=[t[row][1] for t in targets],
                                         maps=[{m: per_class[m][row] for m in methods} for per_class in maps])
            for result in results:
                report.add(Report(list(result.warnings), dict(result.activations), dict(result.seconds), result.layer))
        return [e for e in explained if e is not None], report

    return finish


def _on_device(tensors: Sequence[Tensor], device: torch.device) -> Tensor:
    """The pictures stacked into one batch on ``device`` (to a GPU through page-locked memory, without waiting).

    For a GPU the pictures are stacked by numpy: torch's CPU ops open a team of OpenMP threads, which
    waits on threads that the decoding and writing threads beside it keep from their cores.
    """
    if device.type != "cuda":
        return torch.cat(tensors)
    batch = torch.empty((sum(len(t) for t in tensors), *tensors[0].shape[1:]), dtype=tensors[0].dtype,
                        pin_memory=True)
    np.concatenate([t.numpy() for t in tensors], out=batch.numpy())
    return batch.to(device, non_blocking=True)


def _queued_work(device: torch.device) -> Any:
    """A mark after the work queued on a CUDA ``device`` so far (``None`` elsewhere: copying waits for the work)."""
    if device.type != "cuda":
        return None
    event = torch.cuda.Event()
    event.record(torch.cuda.current_stream(device))
    return event


_copy_streams: dict[torch.device, Any] = {}


def _to_host(tensors: Sequence[Tensor], queued: Any) -> list[Tensor]:
    """``tensors`` on the CPU, once the work up to ``queued`` is done.

    On a GPU they are copied on a stream of their own, which waits for that work only: work queued
    after it (the next batch) runs on meanwhile. The copies land in ordinary memory, which rows can
    hold as long as they like (page-locked memory is costly to allocate).
    """
    if queued is None:  # the CPU (a no-op), or a device copied the plain way (MPS)
        return [t.detach().cpu() for t in tensors]
    device = tensors[0].device
    stream = _copy_streams.get(device)
    if stream is None:
        stream = _copy_streams.setdefault(device, torch.cuda.Stream(device))
    stream.wait_event(queued)
    with torch.cuda.stream(stream):
        return [t.detach().to("cpu") for t in tensors]


def _predict(model: LoadedModel, x: Tensor, classes: Classes, indices: list[int],
             count: int) -> tuple[Tensor, list[list[int]]]:
    """Class probabilities of a batch and each picture's classes, from one forward pass without gradients."""
    if any(isinstance(t, Unit) for t in classes.fixed):
        raise TargetError("a unit is not a class: predicting needs class targets")
    with torch.inference_mode():
        probabilities = model.module(x.to(model.device)).float().softmax(dim=1).cpu()
    if classes.fixed:
        fixed = classes.fixed_for(indices)
        return probabilities, [[t if isinstance(t, int) else t[row] for t in fixed] for row in range(len(indices))]
    return probabilities, probabilities.topk(min(count, probabilities.shape[1]), dim=1).indices.tolist()


def _targets_of(result: Explanation, targets: Tensor) -> list[tuple[int | Unit, float | None]]:
    """Each sample's target in ``result`` (``targets``: its class indices on the CPU) and, for a unit, its value:
    the unit at its own place in the sample."""
    if result.unit is None:
        return [(t, None) for t in targets.tolist()]
    values = result.unit_values.float().cpu().tolist()
    if result.unit_positions is None:
        return [(result.unit, v) for v in values]
    return [(Unit(result.unit.layer, result.unit.channel, (r, c)), v)
            for (r, c), v in zip(result.unit_positions.cpu().tolist(), values)]


def render(explained: Sequence[Explained], methods: Sequence[str], style: str, *, alpha: float, cmap: str,
           percentile: float, stage: Stage = no_stage) -> Iterator[Picture]:
    """Each picture's maps drawn (image, then class rank, then method), batched by input shape."""
    if not explained:
        return
    drawn: dict[tuple[int, int, str], Image.Image] = {}
    ranks = max(len(e.targets) for e in explained)
    with stage("render"):
        for indices in groups_by_shape([e.prepared for e in explained]):
            for rank in range(ranks):
                rows = [i for i in indices if rank < len(explained[i].targets)]
                for method in methods:
                    maps = torch.stack([explained[i].maps[rank][method] for i in rows])
                    pictures = render_batch(maps, style, [explained[i].prepared for i in rows], alpha=alpha,
                                            cmap=cmap, percentile=percentile)
                    drawn.update({(i, rank, method): p for i, p in zip(rows, pictures)})
    for i, e in enumerate(explained):
        for rank, target in enumerate(e.targets):
            for method in methods:
                yield Picture(i, rank, method, target, drawn[i, rank, method])
