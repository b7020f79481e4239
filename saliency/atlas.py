"""The feature atlas: what each channel of a layer responds to, over a set of images (Zeiler & Fergus 2014).

For every channel of a layer, the scan keeps its ``top`` strongest activations over the images,
one per image (the image's strongest position of that channel). Each of those single
activations is then projected back to the pixels with a method (DeconvNet by default: every other
activation of the layer set to zero, the unit ``LAYER:CHANNEL@max``) and drawn beside the image
patch under it. The patch is the unit's receptive field found from the projection's own support —
the box of pixels the projection reaches (non-zero) — so no architecture has to be described.

>>> from saliency.atlas import feature_atlas
>>> atlas = feature_atlas(load_model("demo"), ["photos/"], ["features.7"], top_channels=16)
>>> atlas.write("atlas/")   # features.7.png and atlas.json
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from saliency.batch.sources import Source, list_sources
from saliency.batch.decoding import Decoded, decode
from saliency.engine import explain
from saliency.errors import OptionError, SaliencyError
from saliency.methods import resolve_methods
from saliency.models import LoadedModel
from saliency.names import slug
from saliency.passes import layer_outputs
from saliency.pipeline import check_units
from saliency.render import colorize, grayscale, signed_rgb, write_atomic
from saliency.units import Placed, Unit

DEFAULT_TOP = 9
DEFAULT_TOP_CHANNELS = 16
DEFAULT_METHOD = "deconvnet"
ENGINES = ("local", "ray")
TILE = 64
"""Side of one drawn tile, in pixels."""

Box = tuple[int, int, int, int]
Progress = Callable[[int, int], None]
"""``progress(images scanned, images that failed)``."""


@dataclass(frozen=True)
class Entry:
    """One of a channel's strongest activations: the image (index into :attr:`Atlas.sources`), its
    ``position`` (row, column; ``None`` on a ``[batch, channels]`` layer), its value, and the crop
    ``box`` (left, top, right, bottom in model-input pixels, right and bottom exclusive) of the pixels
    its projection reaches (``None``: it reaches none)."""

    image: int
    position: tuple[int, int] | None
    activation: float
    box: Box | None = None


class Strongest:
    """The ``k`` strongest activations of every channel of one layer, one per image, over the images seen so far."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.values: Tensor | None = None   # [C, ≤k], each row descending
        self.images: Tensor | None = None   # [C, ≤k] image indices
        self.index: Tensor | None = None    # [C, ≤k] flat positions (0 on a [B, C] layer)
        self.map_shape: tuple[int, ...] = ()

    def add(self, values: Tensor, index: Tensor, images: Sequence[int]) -> None:
        """Add the maxima ``values`` ``[B, C]`` at flat positions ``index`` ``[B, C]`` of the images numbered ``images``."""
        images = torch.as_tensor(list(images), dtype=torch.long).expand(values.shape[1], -1)
        values, index = values.T.float(), index.T.long()
        if self.values is not None:
            values = torch.cat([self.values, values], dim=1)
            images = torch.cat([self.images, images], dim=1)
            index = torch.cat([self.index, index], dim=1)
        keep = values.topk(min(self.k, values.shape[1]), dim=1).indices
        self.values, self.images, self.index = values.gather(1, keep), images.gather(1, keep), index.gather(1, keep)

    @property
    def channels(self) -> int:
        return 0 if self.values is None else self.values.shape[0]

    def strength(self) -> Tensor:
        """Each channel's strength: the mean of its kept activations, ``[C]``."""
        return self.values.mean(dim=1)

    def strongest_channels(self, n: int) -> list[int]:
        """The ``n`` channels of greatest :meth:`strength`, strongest first."""
        return self.strength().topk(min(n, self.channels)).indices.tolist()

    def entries(self, channel: int) -> list[Entry]:
        """The channel's kept activations, strongest first (boxes not yet known)."""
        width = self.map_shape[-1] if len(self.map_shape) == 3 else None
        return [Entry(int(i), None if width is None else (int(f) // width, int(f) % width), float(v))
                for v, i, f in zip(self.values[channel], self.images[channel], self.index[channel])]


def maxima(activation: Tensor) -> tuple[Tensor, Tensor]:
    """Each image's strongest activation of each channel and its flat position: ``[B, C]`` twice.

    ``activation``: ``[B, C, H, W]`` (a convolution's output), or ``[B, C]`` (positions are 0).
    """
    if activation.dim() == 2:
        return activation, torch.zeros_like(activation, dtype=torch.long)
    return activation.flatten(2).max(dim=2)


def support_box(projection: Tensor) -> Box | None:
    """The box (left, top, right, bottom; right and bottom exclusive) of the pixels where ``projection``
    ``[C, H, W]`` is not zero in any channel; ``None`` if it is zero everywhere."""
    reached = projection.abs().amax(dim=0) > 0
    rows, cols = reached.any(dim=1).nonzero()[:, 0], reached.any(dim=0).nonzero()[:, 0]
    if len(rows) == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def parse_channels(text: str) -> list[int]:
    """``"0-15"``, ``"3,7,12"`` or ``"0-3,8"`` → channel indices (in order, no repeats)."""
    found: dict[int, None] = {}
    for part in (p.strip() for p in text.split(",")):
        low, dash, high = part.partition("-")
        if not (low.strip().isdigit() and (not dash or high.strip().isdigit())):
            raise OptionError(f"channels must be numbers or ranges such as 0-15 or 3,7,12, got {text!r}")
        first, last = int(low), int(high) if dash else int(low)
        if last < first:
            raise OptionError(f"channel range {part!r} runs backwards; write it as {last}-{first}")
        found.update(dict.fromkeys(range(first, last + 1)))
    return list(found)


@dataclass
class LayerAtlas:
    """One layer's atlas: its output's shape per image, the channels drawn and each one's strongest activations
    with their projections ``maps[channel]`` ``[k, C, H, W]`` (model-input size, float32 on the CPU)."""

    layer: str
    shape: tuple[int, ...]
    channels: list[int]
    entries: dict[int, list[Entry]]
    strength: dict[int, float]
    maps: dict[int, Tensor] = field(default_factory=dict, repr=False)

    @property
    def file_name(self) -> str:
        return f"{slug(self.layer, 'layer')}.png"


@dataclass
class Atlas:
    """The atlas of one or more layers over the images ``sources`` (those in ``failed`` could not be used)."""

    model: LoadedModel
    method: str
    top: int
    sources: list[str]
    failed: list[str]
    layers: list[LayerAtlas]
    inputs: dict[int, Tensor] = field(default_factory=dict, repr=False)  # image index -> model input [C, H, W]

    def to_json(self) -> dict[str, Any]:
        """What ``atlas.json`` holds: per layer, channel and kept activation, the image, position, value and box."""
        return {
            "model": self.model.name, "method": self.method, "top": self.top,
            "images": len(self.sources) - len(self.failed), "failed": self.failed,
            "input": list(self.model.preprocessing.shape),
            "box": "left, top, right, bottom in model-input pixels (right and bottom exclusive): the pixels the "
                   "projection of the activation reaches",
            "layers": [{
                "layer": la.layer, "png": la.file_name, "shape": list(la.shape),
                "channels": [{
                    "channel": c, "strength": round(la.strength[c], 6),
                    "units": [{"image": self.sources[e.image], "unit": str(_unit(la.layer, c, e.position)),
                               "position": None if e.position is None else list(e.position),
                               "activation": round(e.activation, 6),
                               "box": None if e.box is None else list(e.box)} for e in la.entries[c]],
                } for c in la.channels],
            } for la in self.layers],
        }

    def draw(self, layer: LayerAtlas) -> Image.Image:
        """The layer's figure: a row per channel, its projections (signed RGB, grey = 0) beside the image patches."""
        return _figure(self, layer)

    def write(self, out: str | os.PathLike) -> list[Path]:
        """One PNG per layer and ``atlas.json`` into the folder ``out`` (made if missing); the paths written."""
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        for layer in self.layers:
            written.append(write_atomic(folder / layer.file_name, _png(self.draw(layer), {
                "model": self.model.name, "layer": layer.layer, "method": self.method})))
        written.append(write_atomic(folder / "atlas.json", (json.dumps(self.to_json(), indent=1) + "\n").encode()))
        return written


def feature_atlas(model: LoadedModel, sources: Sequence[str], layers: Sequence[str], *,
                  channels: Sequence[int] | None = None, top_channels: int | None = None, top: int = DEFAULT_TOP,
                  method: str = DEFAULT_METHOD, engine: str = "local", batch_size: int = 16, workers: int = 1,
                  address: str | None = None, max_pixels: int | None = None,
                  progress: Progress | None = None) -> Atlas:
    """Scan the images ``sources`` names (as ``saliency batch`` reads them) and build the atlas of ``layers``.

    ``channels``: the channels to draw; else the ``top_channels`` strongest (default 16, and every
    channel of a smaller layer). ``top``: activations kept per channel (one per image). ``method``:
    how each single activation is projected to pixels (any method of the registry). ``engine``:
    ``"local"`` (this process) or ``"ray"`` (the scan on Ray Data: ``workers`` model actors, on the
    cluster at ``address`` or a new local one); the projections run here.
    """
    if not layers:
        raise OptionError("name at least one layer, e.g. --layer features.7")
    if engine not in ENGINES:
        raise OptionError(f"unknown engine {engine!r}; choose from {', '.join(ENGINES)}")
    if top < 1 or batch_size < 1 or (top_channels is not None and top_channels < 1):
        raise OptionError("top, top_channels and batch_size must be at least 1")
    if channels is not None and top_channels is not None:
        raise OptionError("give either channels or top_channels, not both")
    (chosen,) = resolve_methods([method])
    layers = list(dict.fromkeys(layers))
    check_units(model, [Unit(layer, max(channels or [0])) for layer in layers])  # each layer and channel, before the scan
    listed = list(list_sources(sources))
    if engine == "ray":
        strongest, failed = _scan_ray(model, listed, layers, top, batch_size, workers, address, max_pixels, progress)
    else:
        strongest, failed = _scan_local(model, listed, layers, top, batch_size, max_pixels, progress)
    if len(failed) == len(listed):
        raise SaliencyError(f"none of the {len(listed)} images could be used" +
                            (f" (the first: {failed[0][1]})" if failed else ""))
    atlas = Atlas(model, chosen.name, top, [s.id for s in listed], [s for _, s in sorted(failed)], [])
    for layer in layers:
        keeper = strongest[layer]
        drawn = (list(channels) if channels is not None
                 else keeper.strongest_channels(top_channels or DEFAULT_TOP_CHANNELS))
        strength = keeper.strength()
        atlas.layers.append(LayerAtlas(layer, keeper.map_shape, drawn, {c: keeper.entries(c) for c in drawn},
                                       {c: float(strength[c]) for c in drawn}))
    needed = sorted({e.image for la in atlas.layers for es in la.entries.values() for e in es})
    atlas.inputs = _decode_again(model, listed, needed, max_pixels)
    for layer in atlas.layers:
        _project(atlas, layer)
    return atlas


def _project(atlas: Atlas, layer: LayerAtlas) -> None:
    """Each kept activation projected on its own (each image its own position), and its box from the projection."""
    module = atlas.model.module
    device = atlas.model.device
    for channel in layer.channels:
        entries = layer.entries[channel]
        if not entries:
            layer.maps[channel] = torch.zeros(0)
            continue
        x = torch.stack([atlas.inputs[e.image] for e in entries]).to(device)
        if entries[0].position is None:
            target = Placed(Unit(layer.layer, channel), None)
        else:
            width = layer.shape[-1]
            index = torch.tensor([r * width + c for r, c in (e.position for e in entries)], device=device)
            target = Placed(Unit(layer.layer, channel, "max"), index)
        maps = explain(module, x, atlas.method, target)[atlas.method].detach().float().cpu()
        layer.maps[channel] = maps
        layer.entries[channel] = [Entry(e.image, e.position, e.activation, support_box(m))
                                  for e, m in zip(entries, maps)]


# --- the scan ------------------------------------------------------------------------------------

def _scan_local(model: LoadedModel, sources: Sequence[Source], layers: Sequence[str], top: int, batch_size: int,
                max_pixels: int | None, progress: Progress | None) -> tuple[dict[str, Strongest], list]:
    strongest = {layer: Strongest(top) for layer in layers}
    failed: list[tuple[int, str]] = []
    done = 0
    for start, decoded in _decoded_batches(model, sources, batch_size, max_pixels):
        good = [(start + i, d) for i, d in enumerate(decoded) if d.error is None]
        failed += [(start + i, sources[start + i].id) for i, d in enumerate(decoded) if d.error is not None]
        if good:
            x = torch.from_numpy(np.stack([d.tensor for _, d in good])).to(model.device)
            outputs = layer_outputs(model.module, x, layers)
            for layer, activation in outputs.items():
                values, index = maxima(activation)
                keeper = strongest[layer]
                keeper.map_shape = tuple(activation.shape[1:])
                keeper.add(values.cpu(), index.cpu(), [i for i, _ in good])
        done += len(decoded)
        if progress is not None:
            progress(done, len(failed))
    return strongest, failed


def _decoded_batches(model: LoadedModel, sources: Sequence[Source], batch_size: int,
                     max_pixels: int | None) -> Iterator[tuple[int, list[Decoded]]]:
    """Batches of decoded sources, two batches decoded ahead by two threads (as the batch job's local engine)."""
    kwargs = {} if max_pixels is None else {"max_pixels": max_pixels}
    with ThreadPoolExecutor(2, thread_name_prefix="decode") as pool:
        ahead: list[tuple[int, list[Future[Decoded]]]] = []
        for start in range(0, len(sources), batch_size):
            ahead.append((start, [pool.submit(decode, s, model.preprocessing, **kwargs)
                                  for s in sources[start:start + batch_size]]))
            if len(ahead) > 2:
                first, futures = ahead.pop(0)
                yield first, [f.result() for f in futures]
        for first, futures in ahead:
            yield first, [f.result() for f in futures]


def _decode_again(model: LoadedModel, sources: Sequence[Source], images: Iterable[int],
                  max_pixels: int | None) -> dict[int, Tensor]:
    kwargs = {} if max_pixels is None else {"max_pixels": max_pixels}
    inputs = {}
    for i in images:
        decoded = decode(sources[i], model.preprocessing, **kwargs)
        if decoded.error is not None:
            raise SaliencyError(f"image {sources[i].id!r} could not be read again: {decoded.error}")
        inputs[i] = torch.from_numpy(decoded.tensor)
    return inputs


def _scan_ray(model: LoadedModel, sources: Sequence[Source], layers: Sequence[str], top: int, batch_size: int,
              workers: int, address: str | None, max_pixels: int | None,
              progress: Progress | None) -> tuple[dict[str, Strongest], list]:
    """The scan on Ray Data: decode tasks, then model actors returning each image's per-channel maxima."""
    from saliency.batch.decoding import decode_table
    from saliency.batch.ray_engine import connect, decode_tasks, model_actor_options, torch_threads
    from saliency.images import MAX_PIXELS

    ray = connect(address)
    strongest = {layer: Strongest(top) for layer in layers}
    if not sources:
        return strongest, []
    items = [{"source": s.id, "data": s.data, "problem": s.problem, "image": i} for i, s in enumerate(sources)]
    cpus = ray.cluster_resources().get("CPU", 1.0)
    dataset = ray.data.from_items(items, override_num_blocks=max(1, min(len(items) // batch_size, 4 * workers)))
    decoded = dataset.map_batches(decode_table, batch_size=batch_size, batch_format="pyarrow", num_cpus=0,
                                  compute=ray.data.TaskPoolStrategy(size=decode_tasks(cpus, workers)),
                                  fn_kwargs={"preprocessing": model.preprocessing,
                                             "max_pixels": max_pixels or MAX_PIXELS})  # keeps the column "image"
    scanned = decoded.map_batches(
        _Scanner, batch_size=batch_size, batch_format="pyarrow",
        fn_constructor_kwargs={"model": model, "layers": list(layers), "threads": torch_threads(cpus, workers)},
        compute=ray.data.ActorPoolStrategy(size=workers), **model_actor_options(cpus, workers))
    failed: list[tuple[int, str]] = []
    done = 0
    for table in scanned.iter_batches(batch_size=None, batch_format="pyarrow"):
        images = table.column("image").to_pylist()
        errors = table.column("error").to_pylist()
        failed += [(i, sources[i].id) for i, e in zip(images, errors) if e is not None]
        for layer in layers:
            rows = [(image, shape, values, index) for image, shape, values, index in zip(
                images, table.column(f"{layer}/shape").to_pylist(), table.column(f"{layer}/values").to_pylist(),
                table.column(f"{layer}/index").to_pylist()) if values is not None]
            if rows:
                keeper = strongest[layer]
                keeper.map_shape = tuple(rows[0][1])
                keeper.add(torch.from_numpy(np.stack([np.frombuffer(r[2], np.float32) for r in rows])),
                           torch.from_numpy(np.stack([np.frombuffer(r[3], np.int64) for r in rows])),
                           [r[0] for r in rows])
        done += len(images)
        if progress is not None:
            progress(done, len(failed))
    return strongest, failed


class _Scanner:
    """Ray actor: loads the model once; per batch, each image's per-channel maxima of each layer."""

    def __init__(self, model: LoadedModel, layers: list[str], threads: int) -> None:
        from saliency.batch.ray_engine import prepare_actor

        prepare_actor(threads)
        self.model, self.layers = model, layers

    def __call__(self, table: Any) -> Any:
        import pyarrow as pa

        from saliency.batch.decoding import from_row

        rows = table.to_pylist()
        good = [i for i, r in enumerate(rows) if r["error"] is None]
        columns: dict[str, list] = {"image": [r["image"] for r in rows], "error": [r["error"] for r in rows]}
        for layer in self.layers:
            columns[f"{layer}/values"] = [None] * len(rows)
            columns[f"{layer}/index"] = [None] * len(rows)
            columns[f"{layer}/shape"] = [None] * len(rows)
        if good:
            x = torch.from_numpy(np.stack([from_row(rows[i]).tensor for i in good]))
            for layer, activation in layer_outputs(self.model.module, x, self.layers).items():
                values, index = maxima(activation)
                for row, i in enumerate(good):
                    columns[f"{layer}/values"][i] = values[row].float().numpy().tobytes()
                    columns[f"{layer}/index"][i] = index[row].long().numpy().tobytes()
                    columns[f"{layer}/shape"][i] = list(activation.shape[1:])
        types = {"image": pa.int64(), "error": pa.string()}
        return pa.table({name: pa.array(values, types.get(name, pa.list_(pa.int32()) if name.endswith("/shape")
                                                        else pa.binary())) for name, values in columns.items()})


# --- drawing -------------------------------------------------------------------------------------

_BACKGROUND = (250, 250, 250)
_INK = (30, 30, 30)
_EMPTY = (220, 220, 220)
_GAP = 4
_LABEL = 70
_HEADER = 40


def _figure(atlas: Atlas, layer: LayerAtlas) -> Image.Image:
    k = atlas.top
    side = k * (TILE + _GAP)
    width = _LABEL + 2 * side + 3 * _GAP
    height = _HEADER + len(layer.channels) * (TILE + _GAP) + _GAP
    figure = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(figure)
    font = _font(12)
    shown = len(atlas.sources) - len(atlas.failed)
    draw.text((_GAP, 4), f"{atlas.model.name} · {layer.layer} {list(layer.shape)} · {atlas.method} · the {k} "
                         f"strongest activations of each channel over {shown} images", fill=_INK, font=font)
    draw.text((_LABEL, 22), "projection of the single activation (signed RGB, grey = 0)", fill=_INK, font=font)
    draw.text((_LABEL + side + 2 * _GAP, 22), "image patch under its receptive field", fill=_INK, font=font)
    for row, channel in enumerate(layer.channels):
        top = _HEADER + row * (TILE + _GAP)
        draw.text((_GAP, top + 4), f"ch {channel}", fill=_INK, font=font)
        draw.text((_GAP, top + 20), f"{layer.strength[channel]:.3g}", fill=_INK, font=_font(10))
        entries, maps = layer.entries[channel], layer.maps.get(channel)
        for j in range(k):
            left = _LABEL + j * (TILE + _GAP)
            if j >= len(entries):
                for x0 in (left, left + side + 2 * _GAP):
                    draw.rectangle((x0, top, x0 + TILE - 1, top + TILE - 1), fill=_EMPTY)
                continue
            entry = entries[j]
            box = entry.box or (0, 0, maps.shape[-1], maps.shape[-2])
            figure.paste(_tile(_projection_picture(maps[j], box)), (left, top))
            figure.paste(_tile(_patch_picture(atlas, atlas.inputs[entry.image], box)), (left + side + 2 * _GAP, top))
    return figure


def _projection_picture(projection: Tensor, box: Box) -> Image.Image:
    left, top, right, bottom = box
    crop = projection[:, top:bottom, left:right]
    if crop.shape[0] in (1, 3):
        pixels = (signed_rgb(crop, percentile=99.5) * 255 + 0.5).astype(np.uint8)
    else:
        pixels = colorize(grayscale(crop, percentile=99.5))
    return Image.fromarray(np.ascontiguousarray(pixels))


def _patch_picture(atlas: Atlas, x: Tensor, box: Box) -> Image.Image:
    """The model input as the picture it shows (normalisation undone), cropped to ``box``."""
    p = atlas.model.preprocessing
    mean = torch.tensor(p.mean, dtype=x.dtype).view(-1, 1, 1)
    std = torch.tensor(p.std, dtype=x.dtype).view(-1, 1, 1)
    pixels = ((x * std + mean).clamp(0, 1) * 255 + 0.5).to(torch.uint8)
    left, top, right, bottom = box
    crop = pixels[:, top:bottom, left:right]
    crop = crop.expand(3, -1, -1) if crop.shape[0] == 1 else crop[:3]
    return Image.fromarray(crop.permute(1, 2, 0).contiguous().numpy())


def _tile(picture: Image.Image) -> Image.Image:
    """``picture`` scaled to fit a TILE×TILE square (aspect kept), centred on a blank tile."""
    scale = TILE / max(picture.size)
    size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    resample = Image.Resampling.NEAREST if scale >= 2 else Image.Resampling.LANCZOS
    tile = Image.new("RGB", (TILE, TILE), _EMPTY)
    tile.paste(picture.resize(size, resample), ((TILE - size[0]) // 2, (TILE - size[1]) // 2))
    return tile


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _png(picture: Image.Image, text: dict[str, str]) -> bytes:
    from saliency.render import to_png

    return to_png(picture, text, compress_level=6)


def _unit(layer: str, channel: int, position: tuple[int, int] | None) -> Unit:
    return Unit(layer, channel, position)


__all__ = ["Atlas", "Entry", "LayerAtlas", "Strongest", "feature_atlas", "maxima", "parse_channels", "support_box"]
