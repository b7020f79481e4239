"""What a batch job computes, and its model stage, the same in every engine: explain decoded images into rows
(the decode stage is :mod:`saliency.batch.decoding`)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from saliency.batch.decoding import Decoded
from saliency.errors import SaliencyError
from saliency.images import MAX_PIXELS
from saliency.models import LoadedModel, load_model
from saliency.models.weights import file_digest
from saliency.names import slug
from saliency.pipeline import Classes, Explained, Finish, render, start_explaining, target_label, target_of
from saliency.preprocess import Prepared
from saliency.render import DEFAULT_ALPHA, DEFAULT_CMAP, DEFAULT_PERCENTILE, save_png

TOP_PREDICTIONS = 5


@dataclass(frozen=True)
class JobSpec:
    """What a batch job computes; small and picklable, so every worker of a cluster can load the same model.

    ``model``: a model name (``demo``, a torchvision name, ``pkg.module:factory``) loaded with the
    other model fields, or an already loaded :class:`~saliency.models.LoadedModel`.
    ``targets``: classes by label or index, or units (``"features.7:12@max"``) (each image gets each), else each image's ``topk``.
    """

    model: str | LoadedModel = "demo"
    weights: str | None = None
    labels: str | None = None
    input_size: int | None = None
    resize: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    methods: tuple[str, ...] = ("guided",)
    options: tuple[tuple[str, str], ...] = ()
    targets: tuple[str, ...] = ()
    topk: int = 1
    reduce: str = "none"
    png: str | None = None
    batch_size: int = 16
    max_pixels: int = MAX_PIXELS
    device: str | None = None

    def load(self, device: str | None = None) -> LoadedModel:
        """The model, on ``device`` (default: this spec's device, else the CPU)."""
        where = device or self.device
        if isinstance(self.model, LoadedModel):
            return self.model if where is None else _moved(self.model, where)
        return load_model(self.model, weights=self.weights, labels=self.labels, input_size=self.input_size,
                          resize=self.resize, mean=self.mean, std=self.std,
                          device=torch.device(where) if where else None)

    def describe(self, loaded: LoadedModel) -> dict[str, Any]:
        """What identifies the job's results (``_job.json``): a rerun must match it to resume."""
        p = loaded.preprocessing
        return {"model": loaded.name, "weights": _weights_record(loaded, self.weights), "methods": list(self.methods),
                "options": dict(self.options), "targets": list(self.targets),
                "topk": None if self.targets else self.topk, "reduce": self.reduce,
                "input": list(p.shape), "preprocessing": {"resize": p.resize, "mean": list(p.mean),
                                                          "std": list(p.std), "interpolation": p.interpolation},
                "labels": "sha256:" + hashlib.sha256("\n".join(loaded.labels).encode()).hexdigest(),
                "png": os.path.abspath(self.png) if self.png else None}

    def classes(self, loaded: LoadedModel) -> Classes:
        """The class choice for ``loaded`` (labels resolved to indices, unit strings to units)."""
        return Classes(fixed=tuple(dict.fromkeys(target_of(loaded, t) for t in self.targets)), topk=self.topk)


def _weights_record(loaded: LoadedModel, given: str | os.PathLike | None) -> str | None:
    """The job record's weights: a file by its content (``"sha256:<hex>"``, read once as the job starts), so
    the same file under any path resumes the job and another file of the same name does not; else the
    model's own phrase (``"random initialisation"``: the same network every run) or the value given."""
    if loaded.weights_file:
        return file_digest(loaded.weights_file)
    if loaded.weights:
        return loaded.weights
    if given is not None and os.path.isfile(given):  # an already loaded model, with its weights file named
        return file_digest(given)
    return None if given is None else os.fspath(given)


def prepared(decoded: Decoded) -> Prepared:
    """The pipeline's view of a decoded source (the original picture is not carried: pictures are drawn as heatmaps)."""
    return Prepared(tensor=torch.from_numpy(decoded.tensor)[None], image=None, box=decoded.box)


@dataclass
class Rows:
    """Result rows for a group of sources, and how many of them failed."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    explained: int = 0


def explain_decoded(loaded: LoadedModel, decoded: Sequence[Decoded], spec: JobSpec, classes: Classes) -> Rows:
    """Explain the decoded sources in model batches of ``spec.batch_size``: one row per (image, class), one per error."""
    out = Rows()
    good = [d for d in decoded if d.error is None]
    for d in decoded:
        if d.error is not None:
            out.rows.append({"source": d.source, "error": d.error})
            out.failed.append(d.source)
    options = dict(spec.options)
    queued: list[tuple[list[Decoded], Finish]] = []
    for start in range(0, len(good), spec.batch_size):
        chunk = good[start:start + spec.batch_size]
        # the next batch is queued before the last is finished: a GPU explains it while its rows are made
        queued.append((chunk, start_explaining(loaded, [prepared(d) for d in chunk], spec.methods, classes, options)))
        if len(queued) > 1:
            _add_rows(out, *queued.pop(0), loaded.labels, spec)
    for chunk, finish in queued:
        _add_rows(out, chunk, finish, loaded.labels, spec)
    return out


def _add_rows(out: Rows, chunk: Sequence[Decoded], finish: Finish, labels: Sequence[str], spec: JobSpec) -> None:
    explained, _ = finish()
    for d, e in zip(chunk, explained):
        out.rows += _rows(d, e, labels, spec)
    out.explained += len(chunk)


def write_pictures(rows: Sequence[Mapping[str, Any]], spec: JobSpec, model_name: str) -> None:
    """``--png DIR``: each row's maps drawn as heatmaps (the crop the model saw), written atomically."""
    if not spec.png:
        return
    folder = Path(spec.png)
    good = [r for r in rows if r.get("error") is None]
    explained = [Explained(prepared=Prepared(torch.zeros(0), None, r["_box"]), probabilities=torch.zeros(0),
                           targets=[r["target"]],
                           maps=[{m: _as_chw(r[f"map_{m}"], r["map_shape"]) for m in spec.methods}])
                 for r in good]
    for drawn in render(explained, spec.methods, "heatmap", alpha=DEFAULT_ALPHA, cmap=DEFAULT_CMAP,
                        percentile=DEFAULT_PERCENTILE):
        row = good[drawn.image]
        path = folder / picture_name(row["source"], drawn.method, row["label"], row["target"])
        try:
            save_png(drawn.picture, path, {"method": drawn.method, "target": row["label"], "model": model_name,
                                           "source": row["source"]})
        except OSError as exc:
            raise SaliencyError(f"cannot write picture '{path}' in --png '{folder}': {exc.strerror or exc}") from None


PICTURE_NAME_PART = 80
"""Characters kept of a picture's stem and of its label: a file name must stay under 255 bytes."""


def picture_name(source: str, method: str, label: str, target: int = -1) -> str:
    """``STEM-HASH-METHOD-CLASS-LABEL.png`` (``STEM-HASH-METHOD-LABEL.png`` for a unit): readable, and unique
    for sources that share a file name (HASH is of the whole source) and for classes whose labels read alike
    (CLASS is the index); a long stem or label is cut."""
    stem = os.path.splitext(os.path.basename(source.split("#")[0].rstrip("/")))[0] or "image"
    digest = hashlib.sha1(source.encode()).hexdigest()[:8]
    label = slug(label)
    if len(label) > PICTURE_NAME_PART:  # two long labels of one source stay apart
        label = label[:PICTURE_NAME_PART - 9] + "_" + hashlib.sha1(label.encode()).hexdigest()[:8]
    index = f"{target}-" if target >= 0 else ""
    return f"{slug(stem, 'image')[:PICTURE_NAME_PART]}-{digest}-{method}-{index}{label}.png"


def _rows(d: Decoded, e: Explained, labels: Sequence[str], spec: JobSpec) -> list[dict[str, Any]]:
    probabilities = e.probabilities
    top = probabilities.topk(min(TOP_PREDICTIONS, len(probabilities)))
    predictions = [{"index": int(i), "label": labels[int(i)], "probability": float(p)}
                   for p, i in zip(top.values, top.indices)]
    rows = []
    for rank, (target, maps) in enumerate(zip(e.targets, e.maps)):
        is_class = isinstance(target, int)  # else a unit: target -1, its place in the label, no probability
        row = {"source": d.source, "error": None, "width": d.width, "height": d.height, "rank": rank,
               "target": target if is_class else -1, "label": target_label(target, labels),
               "probability": float(probabilities[target]) if is_class else None,
               "predictions": predictions, "_box": d.box}
        for method, attribution in maps.items():
            values = attribution.numpy()
            if spec.reduce == "max-abs":
                values = np.abs(values).max(axis=0).astype(np.float16)
            row[f"map_{method}"] = values
            row["map_shape"] = list(values.shape)
        rows.append(row)
    return rows


def _as_chw(values: np.ndarray, shape: Sequence[int]) -> torch.Tensor:
    array = np.asarray(values, dtype=np.float32).reshape(shape)
    return torch.from_numpy(array if array.ndim == 3 else array[None])


def _moved(loaded: LoadedModel, device: str) -> LoadedModel:
    loaded.module.to(torch.device(device))
    return loaded

