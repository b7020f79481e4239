"""The ``saliency`` command: explain images, compare methods, evaluate them, list models, serve, train the demo."""

from __future__ import annotations

import argparse
import glob
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from contextlib import contextmanager
from pathlib import Path

from saliency import __version__
from saliency.errors import ImageError, OptionError, SaliencyError, TargetError

PROG = "saliency"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff")
DEFAULT_OUT = "saliency-maps"
TOP_PREDICTIONS = 3


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            from saliency.errors import UnsupportedActivationWarning

            warnings.simplefilter("ignore", UnsupportedActivationWarning)  # reported from Explanation.warnings
            return args.run(args) or 0
    except SaliencyError as exc:
        return _fail(str(exc))
    except BrokenPipeError:  # e.g. piped into head: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as exc:
        where = f" '{exc.filename}'" if exc.filename else ""
        return _fail(f"{exc.strerror or exc}{where}")
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the whole command, subcommands included."""
    from saliency.methods import METHODS

    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Saliency maps for PyTorch image classifiers: "
                    f"{', '.join(METHODS)} (default model: the bundled demo, works offline).",
        epilog=_examples("saliency explain examples/star.png",
                         "saliency compare examples/star.png --out compare.png",
                         "saliency eval --n-images 8",
                         "saliency models",
                         "saliency serve --port 8000",
                         "saliency COMMAND --help"))
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    _add_explain(commands)
    _add_compare(commands)
    _add_eval(commands)
    _add_models(commands)
    _add_serve(commands)
    _add_train_demo(commands)
    return parser


# --- explain -----------------------------------------------------------------------------------

def _add_explain(commands: argparse._SubParsersAction) -> None:
    p = _command(commands, "explain", run_explain,
                 "write one saliency PNG per image x method x target class",
                 "saliency explain examples/star.png",
                 "saliency explain examples/ --method guided --style overlay --out maps/",
                 "saliency explain 'photos/*.jpg' --model resnet50 --topk 3",
                 "saliency explain cat.png --model my_pkg.nets:build --weights net.pt --target 3")
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="image files, folders (their images; *.mask.* files skipped) or glob patterns")
    _add_model_options(p)
    _add_method_options(p, "--method")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--target", action="append", metavar="CLASS",
                       help="class to explain, by label or index; repeat for several (default: the top-1 class)")
    which.add_argument("--topk", type=positive_int, metavar="K",
                       help="explain each image's K most probable classes")
    _add_render_options(p, default_style="heatmap")
    p.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                   help=f"folder for the PNG files (default: {DEFAULT_OUT})")
    p.add_argument("--batch-size", type=positive_int, default=8, metavar="N",
                   help="images per forward pass (default: 8)")


def run_explain(args: argparse.Namespace) -> int:
    """``saliency explain``: returns 1 if any image could not be explained."""
    from tqdm import tqdm

    from saliency.pipeline import Classes, explain_prepared, prepare_each, render
    from saliency.render import save_png

    paths = expand_images(args.images)
    methods, options = _chosen_methods(args.method, args.option)
    style = _render_kwargs(args)
    loaded = _load_model(args)
    fixed_targets = [loaded.class_index(_class_arg(t)) for t in args.target or []]
    topk = args.topk or 1
    if topk > len(loaded.labels):
        raise TargetError(f"--topk {topk} is more than the {len(loaded.labels)} classes of model "
                          f"{loaded.name!r}; use at most {len(loaded.labels)}")
    out_dir = Path(args.out)
    names = _OutputNames()
    classes = Classes(fixed=tuple(fixed_targets), topk=topk)
    failures, written, notes = 0, 0, {}
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
        explained, report = explain_prepared(loaded, prepared, methods, classes, options, progress=_SamplingBars())
        notes.update(dict.fromkeys(report.warnings))
        files: dict[Path, list[Path]] = {path: [] for path in kept}
        for drawn in render(explained, methods, **style):
            path, label = kept[drawn.image], loaded.labels[drawn.target]
            target = out_dir / names.take(f"{path.stem}-{drawn.method}-{_slug(label)}.png")
            with _writing(target):
                save_png(drawn.picture, target, {"method": drawn.method, "target": label, "model": loaded.name})
            files[path].append(target)
            written += 1
        for path, e in zip(kept, explained):
            progress.write(f"{path}: {_predictions(e.probabilities, loaded.labels)}")
            for target in files[path]:
                progress.write(f"  -> {target}")
            progress.update(1)
    progress.close()
    for note in notes:
        print(f"{PROG}: warning: {note}", file=sys.stderr)
    print(f"wrote {written} file{'s' * (written != 1)} to {out_dir}/")
    print(f"{style['style']} convention: {_convention(style)}")
    if failures:
        return _fail(f"{failures} of {len(paths)} images could not be read (see above)")
    return 0


class _SamplingBars:
    """Progress bars (on a terminal only) for methods that run many passes, e.g. SmoothGrad."""

    def __init__(self) -> None:
        self.bars: dict[str, object] = {}

    def __call__(self, method: str, done: int, total: int) -> None:
        from tqdm import tqdm

        bar = self.bars.get(method)
        if bar is None:
            bar = self.bars[method] = tqdm(total=total, desc=method, unit="pass", file=sys.stderr,
                                           leave=False, disable=None)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()
            del self.bars[method]


# --- compare -----------------------------------------------------------------------------------

def _add_compare(commands: argparse._SubParsersAction) -> None:
    p = _command(commands, "compare", run_compare,
                 "one figure with the input and each method's map side by side, and a similarity table",
                 "saliency compare examples/star.png",
                 "saliency compare examples/star.png --methods vanilla,guided --style heatmap --out grid.png",
                 "saliency compare dog.jpg --model resnet50 --target 207")
    p.add_argument("image", metavar="IMAGE", help="one image file")
    _add_model_options(p)
    _add_method_options(p, "--methods")
    p.add_argument("--target", metavar="CLASS", help="class to explain, by label or index (default: the top-1 class)")
    _add_render_options(p, default_style="heatmap")
    p.add_argument("--out", metavar="FILE", help="where to write the figure (default: IMAGE-STEM-compare.png)")


def run_compare(args: argparse.Namespace) -> int:
    """``saliency compare``: the figure, and a table of times and similarities on stdout."""
    from saliency.compare import SIMILARITY, Panel, comparison_figure, figure_png, format_table, similarities
    from saliency.engine import explain
    from saliency.images import open_image
    from saliency.methods import REGISTRY
    from saliency.render import render_batch, write_atomic

    path = Path(args.image)
    methods, options = _chosen_methods(args.methods, args.option)
    style = _render_kwargs(args)
    image = open_image(path)
    loaded = _load_model(args)
    target = loaded.class_index(_class_arg(args.target)) if args.target is not None else None
    prepared = loaded.prepare(image)
    explain(loaded.module, prepared.tensor, "vanilla", target=target)  # warm-up, so timings compare fairly
    result = explain(loaded.module, prepared.tensor, methods, target=target, options=options,
                     progress=_SamplingBars())
    index = int(result.targets[0])
    label, probability = loaded.labels[index], float(result.probabilities[0, index])
    size = f"{image.width}×{image.height} px"
    if style["style"] == "overlay" or tuple(prepared.box) == (0, 0, image.width, image.height):
        panels = [Panel(prepared.image, "Input", size)]
    else:  # heatmap and rgb pictures cover the region the model saw
        panels = [Panel(prepared.image.crop(prepared.box), "Input (the crop the model saw)", size)]
    for method in methods:
        (picture,) = render_batch(result[method], prepared=[prepared], **style)
        panels.append(Panel(picture, REGISTRY[method].title, f"{method} · {_ms(result.seconds[method])}"))
    figure = comparison_figure(
        panels, title=f"{path.name} · model {loaded.name} · target: {label} (class {index}, p = {probability:.2f})",
        footnote=_convention(style),
        colorbar=None if style["style"] == "rgb" else (style["cmap"], "saliency (max |attribution|, scaled)"))
    out = Path(args.out) if args.out else Path(f"{path.stem}-compare.png")
    with _writing(out):
        write_atomic(out, figure_png(figure))
    print(f"{path}: {_predictions(result.probabilities[0], loaded.labels)}")
    print(f"target: {label} (class {index}) · forward pass {_ms(result.seconds['forward'])}\n")
    print(format_table(methods, result.seconds, similarities({m: result[m][0] for m in methods})))
    print(f"\ntime: each method's own passes after the shared forward pass (timed after a warm-up run)\n"
          f"~NAME: {SIMILARITY}")
    for note in result.warnings:
        print(f"{PROG}: warning: {note}", file=sys.stderr)
    print(f"wrote {out}")
    return 0


def _add_eval(commands: argparse._SubParsersAction) -> None:
    from saliency.evaluation.command import add_parser  # the sanity checks own their options

    add_parser(commands)


# --- models, serve, train-demo -----------------------------------------------------------------

def _add_models(commands: argparse._SubParsersAction) -> None:
    _command(commands, "models", run_models, "list the models that can be explained", "saliency models")


def run_models(args: argparse.Namespace) -> int:
    """``saliency models``: every model that can be named, whether its weights are here, and how else to name one."""
    from saliency.models import available_models

    rows = [("NAME", "CLASSES", "INPUT", "WEIGHTS", "DESCRIPTION")]
    rows += [(e.name, str(e.num_classes), f"{e.input_size}px", _weights_state(e), e.description)
             for e in available_models()]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join([cell.ljust(w) for cell, w in zip(row, widths)] + [row[4]]))
    print("\nWEIGHTS: bundled/cached = works offline; download = fetched by torchvision on first use.\n"
          "Your own model: --model package.module:factory --weights FILE --labels FILE [--input-size N "
          "--mean R,G,B --std R,G,B].")
    return 0


def _weights_state(entry) -> str:
    if entry.kind == "bundled":
        return "bundled" if entry.available else "missing"
    return "cached" if entry.available else "download"


def _add_serve(commands: argparse._SubParsersAction) -> None:
    p = _command(commands, "serve", run_serve, "run the HTTP service (JSON API and web page)",
                 "saliency serve", "saliency serve --host 0.0.0.0 --port 8080 --workers 2 --threads 4",
                 "saliency serve --dev --model resnet50",
                 "saliency serve --model my_pkg.nets:build --weights net.pt --labels labels.txt --input-size 128")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=number_between(int, 1, 65535), default=8000, help="port (default: 8000)")
    p.add_argument("--workers", type=positive_int, metavar="N", help="worker processes (default: from settings)")
    p.add_argument("--threads", type=positive_int, metavar="N", help="threads per worker (default: from settings)")
    p.add_argument("--dev", action="store_true", help="Flask's development server instead of gunicorn")
    _add_model_options(p, default=None)


def run_serve(args: argparse.Namespace) -> int:
    """``saliency serve``: hands over to the service until interrupted."""
    try:
        from saliency.api import serve
    except ImportError as exc:
        raise SaliencyError(f"the HTTP service is not available in this installation ({exc}); "
                            "reinstall with pip install -e .") from exc
    serve(host=args.host, port=args.port, workers=args.workers, threads=args.threads, dev=args.dev,
          model=args.model, weights=args.weights, labels=args.labels, input_size=args.input_size, resize=args.resize,
          mean=args.mean, std=args.std)
    return 0


def _add_train_demo(commands: argparse._SubParsersAction) -> None:
    p = _command(commands, "train-demo", run_train_demo,
                 "retrain the bundled demo model on generated shapes (CPU; the defaults take several minutes)",
                 "saliency train-demo",
                 "saliency train-demo --steps 300 --out my-demo.pt && "
                 "saliency explain examples/star.png --weights my-demo.pt")
    p.add_argument("--out", metavar="FILE", help="where to save the weights (default: the bundled weights file)")
    p.add_argument("--steps", type=positive_int, default=1500, metavar="N", help="optimiser steps (default: 1500)")
    p.add_argument("--train-images", type=positive_int, default=20_000, metavar="N",
                   help="generated training images (default: 20000)")
    p.add_argument("--test-images", type=positive_int, default=2000, metavar="N",
                   help="fresh images to measure accuracy on (default: 2000)")
    p.add_argument("--seed", type=seed_int, default=0, help="random seed (default: 0)")
    p.add_argument("--threads", type=positive_int, default=2, metavar="N", help="CPU threads (default: 2)")


def run_train_demo(args: argparse.Namespace) -> int:
    """``saliency train-demo``: the models package's trainer; it logs its own progress."""
    from saliency.models.train import train_demo

    if args.out:
        check_output(args.out, folder=False)
    where = {"out_path": args.out} if args.out else {}
    result = train_demo(**where, steps=args.steps, train_images=args.train_images,
                        test_images=args.test_images, seed=args.seed, threads=args.threads)
    if args.out:
        print(f"use them with: saliency explain IMAGE --weights {args.out}")
    return 0 if result.final_loss == result.final_loss else _fail("training diverged (loss is NaN); "
                                                                   "try another --seed or more --steps")


# --- shared pieces -----------------------------------------------------------------------------

def expand_images(arguments: Sequence[str]) -> list[Path]:
    """Image paths from files, folders (their image files, sorted) and glob patterns, no repeats."""
    found: dict[Path, None] = {}
    for arg in arguments:
        if glob.has_magic(arg) and not os.path.exists(arg):
            matches = sorted(glob.glob(arg, recursive=True))
            if not matches:
                raise ImageError(f"no file matches {arg!r}; check the pattern")
            candidates = [Path(m) for m in matches]
        else:
            candidates = [Path(arg)]
        for path in candidates:
            if path.is_dir():
                inside = [f for f in sorted(path.iterdir()) if _looks_like_image(f)]
                if not inside and len(candidates) == 1:
                    raise ImageError(f"folder '{path}' holds no image files ({', '.join(IMAGE_SUFFIXES)})")
                found.update(dict.fromkeys(inside))
            elif not path.exists():
                raise ImageError(f"image file '{path}' does not exist; check the path")
            elif path.is_file():
                found[path] = None
    if not found:
        raise ImageError("no image files found; pass files, folders or patterns such as 'photos/*.jpg'")
    return list(found)


class _OutputNames:
    """Unique file names: a second ``x.png`` becomes ``x-2.png``."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def take(self, name: str) -> str:
        stem, suffix = os.path.splitext(name)
        candidate, n = name, 1
        while candidate in self.used:
            n += 1
            candidate = f"{stem}-{n}{suffix}"
        self.used.add(candidate)
        return candidate


def _command(commands: argparse._SubParsersAction, name: str, run: Callable[[argparse.Namespace], int],
             summary: str, *examples: str) -> argparse.ArgumentParser:
    p = commands.add_parser(name, help=summary, description=summary[0].upper() + summary[1:] + ".",
                            epilog=_examples(*examples), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(run=run)
    return p


def _add_model_options(p: argparse.ArgumentParser, default: str | None = "demo") -> None:
    shown = default or "the service's setting, demo unless configured"
    p.add_argument("--model", default=default, metavar="NAME",
                   help=f"demo, a torchvision name (resnet50) or pkg.module:factory (default: {shown}); "
                        "see 'saliency models'")
    p.add_argument("--weights", metavar="FILE", help="a state_dict / checkpoint file for the model")
    if default is not None:  # the service has its own device setting
        p.add_argument("--device", type=_device, metavar="DEVICE",
                       help="torch device to run the model on: cpu, cuda, cuda:1, mps (default: cpu)")
    group = p.add_argument_group("your own model", "class names and preprocessing (default: the model's own;\n"
                                                   "for pkg.module:factory 224 px, ImageNet mean and std)")
    group.add_argument("--labels", metavar="FILE",
                       help="class names, one per line in class-index order (or a JSON list)")
    group.add_argument("--input-size", type=positive_int, metavar="N", help="side of the square model input")
    group.add_argument("--resize", type=positive_int, metavar="N",
                       help="resize the shorter side to N before the centre crop (at least --input-size)")
    group.add_argument("--mean", type=_channel_values, metavar="R,G,B",
                       help="normalisation mean: one number for every channel, or three")
    group.add_argument("--std", type=_positive_channel_values, metavar="R,G,B",
                       help="normalisation standard deviation: one number for every channel, or three")


def _add_render_options(p: argparse.ArgumentParser, default_style: str) -> None:
    from saliency.render import DEFAULT_ALPHA, DEFAULT_CMAP, DEFAULT_PERCENTILE, STYLES

    p.add_argument("--style", choices=STYLES, default=default_style,
                   help=f"heatmap: |attribution| colour-mapped; overlay: heatmap over the image; "
                        f"rgb: signed attribution as colours (default: {default_style})")
    p.add_argument("--alpha", type=number_between(float, 0.0, 1.0), default=DEFAULT_ALPHA,
                   help=f"heatmap opacity for --style overlay, 0..1 (default: {DEFAULT_ALPHA:g})")
    p.add_argument("--cmap", default=DEFAULT_CMAP, help=f"matplotlib colormap (default: {DEFAULT_CMAP})")
    p.add_argument("--percentile", type=_percentile, default=DEFAULT_PERCENTILE,
                   help=f"clip maps at this percentile of |attribution| (default: {DEFAULT_PERCENTILE:g})")


def _render_kwargs(args: argparse.Namespace) -> dict:
    from saliency.render import colorize

    colorize([0.0], args.cmap)  # an unknown colormap fails here, before any work
    return {"style": args.style, "alpha": args.alpha, "cmap": args.cmap, "percentile": args.percentile}


def _convention(style: dict) -> str:
    from saliency.render import convention

    return convention(style["style"], percentile=style["percentile"], cmap=style["cmap"], alpha=style["alpha"])


def _load_model(args: argparse.Namespace):
    from saliency.models import load_model

    device = getattr(args, "device", None)
    if device is not None:
        _check_device(device)
    return load_model(args.model, weights=args.weights, labels=args.labels, input_size=args.input_size,
                      resize=args.resize, mean=args.mean, std=args.std, device=device)


def _check_device(device) -> None:
    import torch

    if device.type == "cuda" and not torch.cuda.is_available():
        raise SaliencyError(f"--device {device}: torch sees no CUDA GPU here; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise SaliencyError(f"--device {device}: only {torch.cuda.device_count()} CUDA GPU(s) are visible; "
                            f"use cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise SaliencyError(f"--device {device}: Apple's MPS backend is not available here; use --device cpu")


def _predictions(probabilities, labels: Sequence[str]) -> str:
    k = min(TOP_PREDICTIONS, len(labels))
    values, indices = probabilities.topk(k)
    return ", ".join(f"{labels[int(i)]} {float(v):.1%}" for v, i in zip(values, indices))


@contextmanager
def _writing(path: Path) -> Iterator[None]:
    """Turn a failed write into a one-line error that names the file and the fix."""
    try:
        yield
    except OSError as exc:
        if isinstance(exc, BrokenPipeError):
            raise
        where = exc.filename or path
        raise SaliencyError(f"cannot write '{where}': {exc.strerror or exc}; choose another --out") from exc


def check_output(path: str | os.PathLike, folder: bool) -> None:
    """Before long work: fail now, in one line, if ``path`` (a folder, or a file) could not be written."""
    path = Path(path)
    if not folder and path.is_dir():
        raise SaliencyError(f"cannot write '{path}': it is a folder; choose another --out")
    existing = path if folder else path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise SaliencyError(f"cannot write '{existing}': it is a file, not a folder; choose another --out")
    if existing.exists() and not os.access(existing, os.W_OK | os.X_OK):
        raise SaliencyError(f"cannot write in '{existing}': permission denied; choose another --out")


def _ms(seconds: float) -> str:
    ms = seconds * 1000
    return f"{ms:.1f} ms" if ms < 10 else f"{ms:.0f} ms"


def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def _add_method_options(p: argparse.ArgumentParser, flag: str) -> None:
    from saliency.methods import METHODS, RULE_METHODS

    default = ",".join(RULE_METHODS)
    p.add_argument(flag, dest=flag.strip("-"), default=default, metavar="NAMES",
                   help=f"{', '.join(METHODS)} or all; several separated by commas (default: {default})")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a method parameter, e.g. samples=50 (smoothgrad), steps=64 (integrated_gradients), "
                        "layer=features.8 (gradcam); repeat for several")


def _chosen_methods(names: str, pairs: list[str]) -> tuple[list[str], dict[str, str]]:
    """The method names a command was given, and its ``KEY=VALUE`` options checked against them."""
    from saliency.methods import resolve_methods, resolve_options

    chosen = resolve_methods(split_names(names))
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise OptionError(f"--option takes KEY=VALUE, got {pair!r}; e.g. --option samples=50")
        options[key.strip()] = value.strip()
    resolve_options(chosen, options)  # unknown keys and bad values fail here
    return [m.name for m in chosen], options


def split_names(names: str) -> list[str]:
    """``"a, b,,c"`` → ``["a", "b", "c"]``."""
    return [n.strip() for n in names.split(",") if n.strip()]


def _class_arg(value: str) -> str:
    return value  # an index as digits or a label: LoadedModel.class_index reads both, any length


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_") or "class"


def _looks_like_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and ".mask." not in path.name


def _chunks(items: Sequence[Path], size: int) -> Iterator[Sequence[Path]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _fail(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 1


def number_between(kind: type[int] | type[float], low: float, high: float | None = None) -> Callable[[str], Any]:
    """An argparse type: a ``kind`` number (int: a whole number) from ``low`` to ``high`` (None: no upper bound)."""
    what, show = ("a whole number", str) if kind is int else ("a number", "{:g}".format)
    bounds = f"of at least {show(low)}" if high is None else f"between {show(low)} and {show(high)}"

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what} {bounds}, got {text[:40]!r}") from None
        if not (low <= value and (high is None or value <= high)):  # NaN is refused too
            raise argparse.ArgumentTypeError(f"expected {what} {bounds}, got {text[:40]}")
        return value

    return parse


positive_int = number_between(int, 1)
seed_int = number_between(int, 0, 2**32 - 1)  # a random seed numpy and torch both accept


def _channel_values(text: str) -> tuple[float, ...]:
    """``--mean``/``--std``: one number (every channel) or three separated by commas (R,G,B)."""
    import math

    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        values = ()
    if len(values) not in (1, 3) or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected one number or three separated by commas (R,G,B), got {text!r}")
    return values


def _positive_channel_values(text: str) -> tuple[float, ...]:
    values = _channel_values(text)
    if any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return values


def _device(text: str):
    import torch

    try:
        return torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"not a torch device: {text!r} (try cpu, cuda, cuda:1 or mps)") from None


def _percentile(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a percentile in (0, 100], got {text!r}") from None
    if not 0.0 < value <= 100.0:
        raise argparse.ArgumentTypeError(f"expected a percentile in (0, 100], got {value:g}")
    return value


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
