"""Per-stage rates of a batch job on one CPU core, for sizing a cluster (docs/scaling.md).

    python bench/stages.py                 # 256 JPEGs 224x224, ResNet50's preprocessing, method guided

* decode: read + decode + prepare one JPEG (saliency.batch.decoding.decode), images/s on one thread;
* write: build and write Parquet shards of rows as the job stores them (Store.encoding), rows/s and MB/s
  on one thread, for raw float32 maps ``[3, 224, 224]`` and for ``--reduce max-abs`` (float16 ``[224, 224]``).

The model's own rate is bench/batch.py's "limit" (CPU) and bench/methods.py's (GPU).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from images import photo_jpeg  # bench/images.py: the same photo-like JPEGs

from saliency.batch.sources import Source
from saliency.batch.store import Store
from saliency.batch.decoding import decode
from saliency.preprocess import Preprocessing


def decode_rate(folder: Path, count: int, size: int) -> float:
    paths = []
    for i in range(count):
        path = folder / f"{i:04d}.jpg"
        path.write_bytes(photo_jpeg(size, i))
        paths.append(str(path))
    preprocessing = Preprocessing(crop=224, resize=256)
    for path in paths[:8]:
        decode(Source(path), preprocessing)
    start = time.perf_counter()
    for path in paths:
        decode(Source(path), preprocessing)
    return count / (time.perf_counter() - start)


def write_rate(folder: Path, rows: int, reduce: str, shard: int = 128) -> tuple[float, float]:
    job = {"methods": ["guided"], "reduce": reduce}
    store = Store(str(folder / reduce), job)
    store.open()
    rng = np.random.default_rng(0)
    shape = (224, 224) if reduce == "max-abs" else (3, 224, 224)
    dtype = np.float16 if reduce == "max-abs" else np.float32
    maps = [(rng.standard_normal(shape) * 1e-3).astype(dtype) for _ in range(shard)]
    prediction = [{"index": 1, "label": "x", "probability": 0.5}] * 5
    table = [{"source": f"img{i}.jpg", "error": None, "width": 500, "height": 375, "rank": 0, "target": 1,
              "label": "x", "probability": 0.5, "predictions": prediction, "map_shape": list(shape),
              "map_guided": maps[i]} for i in range(shard)]
    start = time.perf_counter()
    written = 0
    while written < rows:
        for row in table:
            row["source"] = f"img{written}-{row['map_shape'][0]}.jpg"
            written += 1
        store.write(table)
    seconds = time.perf_counter() - start
    size = sum(p.stat().st_size for p in (folder / reduce).glob("*.parquet"))
    return written / seconds, size / seconds / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--size", type=int, default=224, help="side of the JPEGs (500 for ImageNet-like photos)")
    parser.add_argument("--rows", type=int, default=1024)
    args = parser.parse_args()
    torch.set_num_threads(1)
    scratch = Path(tempfile.mkdtemp(prefix="saliency-bench-stages-"))
    try:
        decoded = decode_rate(scratch, args.images, args.size)
        print("| stage (one core) | rate |\n| --- | --- |")
        print(f"| decode + prepare, {args.size}×{args.size} JPEG → 224×224 input | {decoded:.0f} images/s |")
        for reduce in ("none", "max-abs"):
            rows, megabytes = write_rate(scratch, args.rows, reduce)
            what = "raw float32 [3, 224, 224]" if reduce == "none" else "max-abs float16 [224, 224]"
            print(f"| write Parquet rows, one method, {what} | {rows:.0f} rows/s, {megabytes:.0f} MB/s on disk, "
                  f"{megabytes / rows * 1e3:.0f} kB/row |")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
