"""The decode stage of a batch job, the same in every engine: read a source, decode it, prepare the model's input.

Pillow and numpy only: a process that only decodes (a Ray decode task, a decoding process of the
local engine) never imports torch, so it starts in a fraction of a second instead of about 1.3 s,
and holds about 270 MB less memory (docs/scaling.md). The model's side turns a :class:`Decoded` into
the pipeline's input (:func:`saliency.batch.work.prepared`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from saliency.batch.sources import Source
from saliency.errors import SaliencyError
from saliency.images import MAX_PIXELS, open_image
from saliency.preprocess import Box, Preprocessing


SOURCE_COLUMNS = ("source", "data", "problem")
"""A :class:`Source`'s fields as the columns of the table a Ray decode task takes."""


@dataclass
class Decoded:
    """One source ready for the model: its input ``tensor`` ``[C, H, W]`` (float32), or the ``error`` that stopped it."""

    source: str
    tensor: np.ndarray | None = None
    width: int = 0
    height: int = 0
    box: Box = (0, 0, 0, 0)
    error: str | None = None


def decode(source: Source, preprocessing: Preprocessing, max_pixels: int = MAX_PIXELS,
           base: str | None = None) -> Decoded:
    """Read, decode and prepare one source, as :func:`saliency.pipeline.prepare` does; any problem with it becomes
    its one-line ``error``."""
    try:
        array, original, box = preprocessing.to_array(open_image(source.read(base), max_pixels=max_pixels))
    except SaliencyError as exc:
        return Decoded(source.id, error=str(exc))
    except (MemoryError, RecursionError):
        raise
    except Exception as exc:  # a decoder's own failure on a hostile file: that source's error, not the job's end
        return Decoded(source.id, error=f"cannot decode image {source.id!r}: {type(exc).__name__}: {exc}")
    width, height = original.size
    return Decoded(source.id, array, width, height, tuple(int(v) for v in box))


def decode_all(sources: Sequence[Source], preprocessing: Preprocessing, max_pixels: int = MAX_PIXELS,
               base: str | None = None) -> list[Decoded]:
    """:func:`decode` for each source, in order (one call of a decoding process, or of a Ray decode task)."""
    return [decode(s, preprocessing, max_pixels, base) for s in sources]


def decode_table(table: Any, preprocessing: Preprocessing, max_pixels: int, base: str | None = None) -> Any:
    """Ray's decode task: a table of sources (``source``, ``data``, ``problem``) → a table of model inputs (raw
    float32 bytes) or errors, one row each (:func:`from_row` reads one back); the table's other columns come along."""
    import pyarrow as pa

    columns = [table.column(c).to_pylist() if c in table.column_names else [None] * table.num_rows
               for c in SOURCE_COLUMNS]
    sources = [Source(*fields) for fields in zip(*columns)]
    rows = decode_all(sources, preprocessing, max_pixels, base)
    decoded = pa.table({
        "source": [r.source for r in rows],
        "pixels": pa.array([None if r.tensor is None else r.tensor.tobytes() for r in rows], pa.binary()),
        "shape": pa.array([None if r.tensor is None else list(r.tensor.shape) for r in rows], pa.list_(pa.int32())),
        "width": pa.array([r.width for r in rows], pa.int32()),
        "height": pa.array([r.height for r in rows], pa.int32()),
        "box": pa.array([list(r.box) for r in rows], pa.list_(pa.int32())),
        "error": pa.array([r.error for r in rows], pa.string()),
    })
    for name in table.column_names:
        if name not in SOURCE_COLUMNS:
            decoded = decoded.append_column(name, table.column(name))
    return decoded


def from_row(row: dict) -> Decoded:
    """One row of :func:`decode_table`'s output as the :class:`Decoded` it was made from."""
    if row["error"] is not None:
        return Decoded(row["source"], error=row["error"])
    tensor = np.frombuffer(row["pixels"], dtype=np.float32).reshape(row["shape"]).copy()
    return Decoded(row["source"], tensor, row["width"], row["height"], tuple(row["box"]))
