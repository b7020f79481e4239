"""``saliency explain``: one saliency PNG per image x method x target class."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from saliency.cli.options import (PROG, OutputNames, SamplingBars, add_class_options, add_method_options,
                                  add_model_options, add_render_options, add_threads_option, chosen_methods,
                                  class_arg, command, convention, demo_hint, expand_images, fail, load_model,
                                  looks_like_photo, positive_int, predictions, render_kwargs, set_threads, writing)
from saliency.errors import ImageError, SaliencyError, TargetError
from saliency.names import slug

DEFAULT_OUT = "saliency-maps"


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``explain`` on the ``saliency`` command's subparsers."""
    p = command(commands, "explain", run,
                "write one saliency PNG per image x method x target class",
                "saliency explain examples/star.png",
                "saliency explain examples/ --method guided --style overlay --out maps/",
                "saliency explain 'photos/*.jpg' --model resnet50 --topk 3",
                "saliency explain cat.png --model my_pkg.nets:build --weights net.pt --target 3",
                "saliency explain examples/ --method deconvnet --target features.7:12@max   # a unit of a layer")
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="image files, folders (their images; *.mask.* files skipped) or glob patterns")
    add_model_options(p)
    add_method_options(p, "--method")
    add_class_options(p)
    add_render_options(p, default_style="heatmap")
    p.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                   help=f"folder for the PNG files (default: {DEFAULT_OUT})")
    p.add_argument("--batch-size", type=positive_int, default=8, metavar="N",
                   help="images per forward pass (default: 8)")
    add_threads_option(p)
    return p


def run(args: argparse.Namespace) -> int:
    """``saliency explain``: returns 1 if any image could not be explained.

    Each picture is ``OUT/STEM-METHOD-STYLE-CLASS.png``: runs with other methods, styles or classes
    into the same folder keep each other's files.
    """
    from tqdm import tqdm

    from saliency.pipeline import Classes, explain_prepared, prepare_each, render, target_label, target_of
    from saliency.render import save_png

    paths = expand_images(args.images)
    methods, options = chosen_methods(args.method, args.option)
    style = render_kwargs(args)
    set_threads(args)
    loaded = load_model(args)
    fixed_targets = [target_of(loaded, class_arg(t)) for t in args.target or []]
    topk = args.topk or 1
    if topk > len(loaded.labels):
        raise TargetError(f"--topk {topk} is more than the {len(loaded.labels)} classes of model "
                          f"{loaded.name!r}; use at most {len(loaded.labels)}")
    out_dir = Path(args.out)
    names = OutputNames()
    classes = Classes(fixed=tuple(fixed_targets), topk=topk)
    failures, written, notes, photos = 0, 0, {}, False
    progress = tqdm(total=len(paths), unit="image", file=sys.stderr, leave=False,
                    disable=True if len(paths) < 2 else None)  # None: shown on a terminal only
    for chunk in _chunks(paths, args.batch_size):
        kept, prepared = [], []
        for path, item in zip(chunk, prepare_each(loaded, chunk)):
            if isinstance(item, ImageError):
                if len(paths) == 1:
                    raise item
                failures += 1
                progress.write(f"{PROG}: error: {item}", file=sys.stderr)
                progress.update(1)
            elif isinstance(item, SaliencyError):
                raise item
            else:
                kept.append(path)
                prepared.append(item)
                photos = photos or looks_like_photo(item.image)
        explained, report = explain_prepared(loaded, prepared, methods, classes, options, progress=SamplingBars())
        notes.update(dict.fromkeys(report.warnings))
        files: dict[Path, list[Path]] = {path: [] for path in kept}
        for drawn in render(explained, methods, **style):
            path, label = kept[drawn.image], target_label(drawn.target, loaded.labels)
            target = out_dir / names.take(f"{path.stem}-{drawn.method}-{style['style']}-{slug(label)}.png")
            with writing(target):
                save_png(drawn.picture, target, {"method": drawn.method, "target": label, "model": loaded.name})
            files[path].append(target)
            written += 1
        for path, e in zip(kept, explained):
            progress.write(f"{path}: {predictions(e.probabilities, loaded.labels)}")
            for target in files[path]:
                progress.write(f"  -> {target}")
            progress.update(1)
    progress.close()
    for note in notes:
        print(f"{PROG}: warning: {note}", file=sys.stderr)
    hint = demo_hint(loaded.name, photos)
    if hint:
        print(f"{PROG}: note: {hint}", file=sys.stderr)
    print(f"wrote {written} file{'s' * (written != 1)} to {out_dir}/")
    print(f"{style['style']} convention: {convention(style)}")
    if failures:
        return fail(f"{failures} of {len(paths)} images could not be read (see above)")
    return 0


def _chunks(items: Sequence[Path], size: int) -> Iterator[Sequence[Path]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
