"""``saliency compare``: one figure with each method's map side by side, and a table of times and similarities."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from saliency.cli.options import (PROG, SamplingBars, add_method_options, add_model_options, add_render_options,
                                  add_threads_option, chosen_methods, class_arg, command, convention, demo_hint,
                                  load_model, looks_like_photo, predictions, render_kwargs, set_threads, writing)


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``compare`` on the ``saliency`` command's subparsers."""
    p = command(commands, "compare", run,
                "one figure with the input and each method's map side by side, and a similarity table",
                "saliency compare examples/star.png",
                "saliency compare examples/star.png --methods vanilla,guided --style heatmap --out grid.png",
                "saliency compare dog.jpg --model resnet50 --target 207")
    p.add_argument("image", metavar="IMAGE", help="one image file")
    add_model_options(p)
    add_method_options(p, "--methods")
    p.add_argument("--target", metavar="TARGET",
                   help="class to explain, by label or index, or a unit LAYER:CHANNEL[@ROW,COL|@max] "
                        "(default: the top-1 class)")
    add_render_options(p, default_style="heatmap")
    p.add_argument("--out", metavar="FILE", help="where to write the figure (default: IMAGE-STEM-compare.png)")
    add_threads_option(p)
    return p


def run(args: argparse.Namespace) -> int:
    """``saliency compare``: the figure, and a table of times and similarities on stdout."""
    from saliency.compare import SIMILARITY, Panel, comparison_figure, figure_png, format_table, similarities
    from saliency.engine import explain
    from saliency.images import open_image
    from saliency.methods import REGISTRY
    from saliency.pipeline import target_of
    from saliency.render import render_batch, write_atomic

    path = Path(args.image)
    methods, options = chosen_methods(args.methods, args.option)
    style = render_kwargs(args)
    image = open_image(path)
    set_threads(args)
    loaded = load_model(args)
    target = target_of(loaded, class_arg(args.target)) if args.target is not None else None
    prepared = loaded.prepare(image)
    explain(loaded.module, prepared.tensor, "vanilla", target=target)  # warm-up, so timings compare fairly
    result = explain(loaded.module, prepared.tensor, methods, target=target, options=options,
                     progress=SamplingBars())
    index = int(result.targets[0])
    if result.unit is None:
        label, what, score = loaded.labels[index], f"class {index}", f", p = {float(result.probabilities[0, index]):.2f}"
    else:  # a unit, at its place in the image
        unit, at = result.unit, result.unit_positions
        label = f"{unit.layer}:{unit.channel}" + ("" if at is None else "@{},{}".format(*at[0].tolist()))
        what, score = "unit", f", value {float(result.unit_values[0]):.3g}"
    size = f"{image.width}×{image.height} px"
    if style["style"] == "overlay" or tuple(prepared.box) == (0, 0, image.width, image.height):
        panels = [Panel(prepared.image, "Input", size)]
    else:  # heatmap and rgb pictures cover the region the model saw
        panels = [Panel(prepared.image.crop(prepared.box), "Input (the crop the model saw)", size)]
    for method in methods:
        (picture,) = render_batch(result[method], prepared=[prepared], **style)
        panels.append(Panel(picture, REGISTRY[method].title, f"{method} · {_ms(result.seconds[method])}"))
    figure = comparison_figure(
        panels, title=f"{path.name} · model {loaded.name} · target: {label} ({what}{score})",
        footnote=convention(style),
        colorbar=None if style["style"] == "rgb" else (style["cmap"], "saliency (max |attribution|, scaled)"))
    out = Path(args.out) if args.out else Path(f"{path.stem}-compare.png")
    with writing(out):
        write_atomic(out, figure_png(figure))
    print(f"{path}: {predictions(result.probabilities[0], loaded.labels)}")
    print(f"target: {label} ({what}) · forward pass {_ms(result.seconds['forward'])}\n")
    print(format_table(methods, result.seconds, similarities({m: result[m][0] for m in methods})))
    print(f"\ntime: each method's own passes after the shared forward pass (timed after a warm-up run)\n"
          f"~NAME: {SIMILARITY}")
    for note in result.warnings:
        print(f"{PROG}: warning: {note}", file=sys.stderr)
    hint = demo_hint(loaded.name, looks_like_photo(image))
    if hint:
        print(f"{PROG}: note: {hint}", file=sys.stderr)
    print(f"wrote {out}")
    return 0


def _ms(seconds: float) -> str:
    ms = seconds * 1000
    return f"{ms:.1f} ms" if ms < 10 else f"{ms:.0f} ms"
