"""What a heatmap picture costs to encode: the palette PNG the service sends against the same picture in RGB.

    python bench/pictures.py                 # a guided map of ResNet50 (random init) on a photo-like 224×224 JPEG
    python bench/pictures.py --size 500 --repeats 50

The heatmap is an 8-bit value through the colour map's 256 entries, so a palette PNG holds it
exactly (checked here, pixel for pixel); overlay and rgb pictures have more colours and stay RGB.
Repetitions alternate between the two encodings; figures are medians in this process.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time

import numpy as np
import torch
from PIL import Image

from images import photo_jpeg  # bench/images.py

import saliency
from saliency.models import load_model
from saliency.pipeline import prepare
from saliency.render import render, to_png


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=224, help="side of the photo (the heatmap covers its crop)")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = load_model("resnet50", weights="random")
    prepared = prepare(model, photo_jpeg(args.size))
    attribution = saliency.explain(model.module, prepared.tensor, "guided")["guided"][0]
    palette = render(attribution, "heatmap", prepared)
    rgb = palette.convert("RGB")
    decoded = Image.open(io.BytesIO(to_png(palette))).convert("RGB")
    assert np.array_equal(np.asarray(decoded), np.asarray(rgb)), "the palette PNG must be lossless"
    seconds: dict[str, list[float]] = {"palette": [], "rgb": []}
    sizes = {"palette": len(to_png(palette)), "rgb": len(to_png(rgb))}
    for _ in range(args.repeats):
        for name, picture in (("palette", palette), ("rgb", rgb)):
            start = time.perf_counter()
            to_png(picture)
            seconds[name].append(time.perf_counter() - start)
    ms = {name: statistics.median(values) * 1000 for name, values in seconds.items()}
    print(f"heatmap {palette.width}×{palette.height}, PNG compress level 1, {args.repeats} repetitions\n")
    print("| encoding | ms | kB |\n| --- | --- | --- |")
    for name in ("palette", "rgb"):
        print(f"| {name} | {ms[name]:.2f} | {sizes[name] / 1000:.0f} |")
    print(f"\npalette / rgb: {ms['palette'] / ms['rgb']:.2f} × the time, {sizes['palette'] / sizes['rgb']:.2f} × the size "
          "(lossless: same pixels)")


if __name__ == "__main__":
    main()
