"""Small generated image sets for the batch-job tests (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
from PIL import Image


def write_images(folder: Path, count: int, size: int = 72, suffix: str = ".png", seed: int = 0) -> list[Path]:
    """``count`` pictures of random pixels, in ``folder`` (sorted names).

    Every pixel is drawn on its own: flat regions would give max-pools exact ties, whose switches
    then depend on rounding that differs between batch sizes.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        picture = Image.fromarray(rng.integers(0, 256, size=(size, size + i % 3, 3), dtype=np.uint8))
        path = folder / f"img{i:03d}{suffix}"
        picture.save(path)
        paths.append(path)
    return paths


def rows(dest: Path):
    """Every row of a result dataset, sorted by (source, rank), as a pyarrow table."""
    table = ds.dataset(str(dest), format="parquet").to_table()
    return table.sort_by([("source", "ascending"), ("rank", "ascending")])


def sources_in(dest: Path) -> list[str]:
    return rows(dest).column("source").to_pylist()
