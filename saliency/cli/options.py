"""What several ``saliency`` commands share: argparse types, option groups, model loading, output names, messages."""

from __future__ import annotations

import argparse
import glob
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from saliency.errors import ImageError, OptionError, SaliencyError

if TYPE_CHECKING:
    import torch

    from saliency.models import LoadedModel

PROG = "saliency"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff")
TOP_PREDICTIONS = 3
THREADS_VARIABLE = "SALIENCY_TORCH_THREADS"
_THREADS_BEFORE: list[int] = []  # torch's thread count before set_threads changed it


# --- argparse types ----------------------------------------------------------------------------

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


def device_arg(text: str):
    """An argparse type: a ``torch.device`` (torch is imported only when the option is given)."""
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


# --- commands and option groups ----------------------------------------------------------------

def command(commands: argparse._SubParsersAction, name: str, run: Callable[[argparse.Namespace], int],
            summary: str, *examples_: str) -> argparse.ArgumentParser:
    """Register subcommand ``name``: ``summary`` as its help and description, ``examples_`` as its epilog."""
    p = commands.add_parser(name, help=summary, description=summary[0].upper() + summary[1:] + ".",
                            epilog=examples(*examples_), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(run=run)
    return p


def examples(*lines: str) -> str:
    """An epilog: ``examples:`` and the command lines, indented."""
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def add_model_options(p: argparse.ArgumentParser, default: str | None = "demo") -> None:
    """``--model``, ``--weights``, ``--device`` (unless ``default`` is None) and the own-model options."""
    shown = default or "the service's setting, demo unless configured"
    p.add_argument("--model", default=default, metavar="NAME",
                   help=f"demo, a torchvision name (resnet50) or pkg.module:factory (default: {shown}); "
                        "see 'saliency models'")
    p.add_argument("--weights", metavar="FILE", help="a state_dict / checkpoint file for the model")
    if default is not None:  # the service has its own device setting
        p.add_argument("--device", type=device_arg, metavar="DEVICE",
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


def add_threads_option(p: argparse.ArgumentParser, flag: str = "--threads", default: str | None = None) -> None:
    """``--threads N`` (``flag``): how many CPU threads torch runs the model on; ``default`` says what else."""
    default = default or (f"${THREADS_VARIABLE} if set, else 1 for the bundled demo model and torch's own, "
                          "one per core, for others")
    p.add_argument(flag, type=positive_int, dest="torch_threads", metavar="N",
                   help=f"CPU threads for torch (default: {default}; on a busy machine fewer is often faster)")


def set_threads(args: argparse.Namespace) -> int | None:
    """Apply ``--threads``, else ``$SALIENCY_TORCH_THREADS``, else 1 for a bundled model, to torch.

    Returns the number set, or None (torch keeps its default). A bundled model is small enough that
    more threads only wait on each other.
    """
    from saliency.models import BUNDLED

    threads = getattr(args, "torch_threads", None)
    if threads is None and os.environ.get(THREADS_VARIABLE, "").strip():
        raw = os.environ[THREADS_VARIABLE].strip()
        try:
            threads = positive_int(raw)
        except argparse.ArgumentTypeError as exc:
            raise OptionError(f"${THREADS_VARIABLE}: {exc}") from None
    if threads is None and getattr(args, "model", None) in BUNDLED:
        threads = 1
    if threads is not None:
        import torch

        _THREADS_BEFORE.append(torch.get_num_threads())
        torch.set_num_threads(threads)
    return threads


def restore_threads() -> None:
    """Undo :func:`set_threads` (``main`` does, so that a command run in-process leaves torch as it was)."""
    if _THREADS_BEFORE:
        import torch

        torch.set_num_threads(_THREADS_BEFORE[0])
        _THREADS_BEFORE.clear()


def add_engine_options(p: argparse.ArgumentParser, local: str, actors: str, gpus: bool = False) -> None:
    """``--engine``, ``--address``, ``--workers`` (and ``--gpus-per-worker``): where a dataset command runs."""
    from saliency.batch import ENGINES

    cluster = p.add_argument_group("engine")
    cluster.add_argument("--engine", choices=ENGINES, default="local",
                         help=f"local: {local}; ray: Ray Data (pip install 'saliency[ray]') (default: local)")
    cluster.add_argument("--address", metavar="ADDRESS",
                         help="--engine ray: the cluster to join, 'auto', HOST:PORT or ray://HOST:PORT (default: "
                              "start a local Ray)")
    cluster.add_argument("--workers", type=positive_int, default=1, metavar="N",
                         help=f"--engine ray: {actors}, each loading the model once (default: 1)")
    if gpus:
        cluster.add_argument("--gpus-per-worker", type=number_between(float, 0.0), default=0.0, metavar="G",
                             help="--engine ray: GPUs per model actor, e.g. 1 or 0.5 (default: 0, the CPU)")


def check_engine_options(args: argparse.Namespace) -> None:
    """Ray's options without ``--engine ray``: one clear error; with it, Ray must be installed."""
    flags = ["--address", "--workers"] + (["--gpus-per-worker"] if hasattr(args, "gpus_per_worker") else [])
    used = args.address or args.workers != 1 or getattr(args, "gpus_per_worker", 0)
    if args.engine != "ray" and used:
        raise OptionError(f"{', '.join(flags[:-1])} and {flags[-1]} need --engine ray")
    if args.engine == "ray":
        from saliency.batch.ray_engine import require_ray

        require_ray()


def add_render_options(p: argparse.ArgumentParser, default_style: str) -> None:
    """``--style``, ``--alpha``, ``--cmap`` and ``--percentile``."""
    from saliency.render import DEFAULT_ALPHA, DEFAULT_CMAP, DEFAULT_PERCENTILE, STYLES

    p.add_argument("--style", choices=STYLES, default=default_style,
                   help=f"heatmap: |attribution| colour-mapped; overlay: heatmap over the image; "
                        f"rgb: signed attribution as colours (default: {default_style})")
    p.add_argument("--alpha", type=number_between(float, 0.0, 1.0), default=DEFAULT_ALPHA,
                   help=f"heatmap opacity for --style overlay, 0..1 (default: {DEFAULT_ALPHA:g})")
    p.add_argument("--cmap", default=DEFAULT_CMAP, help=f"matplotlib colormap (default: {DEFAULT_CMAP})")
    p.add_argument("--percentile", type=_percentile, default=DEFAULT_PERCENTILE,
                   help=f"clip maps at this percentile of |attribution| (default: {DEFAULT_PERCENTILE:g})")


def add_method_options(p: argparse.ArgumentParser, flag: str) -> None:
    """The methods option (``flag``: ``--method`` or ``--methods``) and ``--option KEY=VALUE``."""
    from saliency.methods import METHODS, RULE_METHODS

    default = ",".join(RULE_METHODS)
    p.add_argument(flag, dest=flag.strip("-"), default=default, metavar="NAMES",
                   help=f"{', '.join(METHODS)} or all; several separated by commas (default: {default})")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a method parameter, e.g. samples=50 (smoothgrad), steps=64 (integrated_gradients), "
                        "layer=features.8 (gradcam); repeat for several")


# --- reading the options -----------------------------------------------------------------------

def add_class_options(p: argparse.ArgumentParser, topk_default: int | None = None) -> None:
    """``--target TARGET`` (repeatable) or ``--topk K``: which classes (or units) each image is explained for."""
    which = p.add_mutually_exclusive_group()
    which.add_argument("--target", action="append", metavar="TARGET",
                       help="class to explain, by label or index, or a unit of a layer: LAYER:CHANNEL (the "
                            "channel's sum), LAYER:CHANNEL@ROW,COL or LAYER:CHANNEL@max (its strongest position "
                            "in each image), e.g. features.28:12@max; repeat for several (default: the top-1 class)")
    shown = f" (default: {topk_default})" if topk_default is not None else ""
    which.add_argument("--topk", type=positive_int, default=topk_default, metavar="K",
                       help=f"explain each image's K most probable classes{shown}")


def chosen_methods(names: str, pairs: list[str]) -> tuple[list[str], dict[str, str]]:
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


def class_arg(value: str) -> str:
    """A ``--target``: an index as digits, a label or a unit; :func:`saliency.pipeline.target_of` reads all three."""
    return value


def render_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The render options as keyword arguments; an unknown colormap fails here, before any work."""
    from saliency.render import colorize

    colorize([0.0], args.cmap)
    return {"style": args.style, "alpha": args.alpha, "cmap": args.cmap, "percentile": args.percentile}


def convention(style: dict[str, Any]) -> str:
    """How to read pictures drawn with ``style`` (from :func:`render_kwargs`), in one sentence."""
    from saliency.render import convention

    return convention(style["style"], percentile=style["percentile"], cmap=style["cmap"], alpha=style["alpha"])


def load_model(args: argparse.Namespace) -> LoadedModel:
    """The model that the model options name, on ``--device`` (checked first) where the command has one."""
    from saliency.models import load_model

    device = getattr(args, "device", None)
    if device is not None:
        check_device(device)
    return load_model(args.model, weights=args.weights, labels=args.labels, input_size=args.input_size,
                      resize=args.resize, mean=args.mean, std=args.std, device=device)


def check_device(device) -> None:
    """One clear error if torch cannot use ``device`` here."""
    import torch

    if device.type == "cuda" and not torch.cuda.is_available():
        raise SaliencyError(f"--device {device}: torch sees no CUDA GPU here; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise SaliencyError(f"--device {device}: only {torch.cuda.device_count()} CUDA GPU(s) are visible; "
                            f"use cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise SaliencyError(f"--device {device}: Apple's MPS backend is not available here; use --device cpu")
    if device.type == "meta":
        raise SaliencyError("--device meta holds no values, so nothing can be explained on it; use --device cpu")
    if device.type not in ("cpu", "cuda", "mps"):
        try:
            torch.empty(1, device=device)
        except Exception as exc:  # noqa: BLE001 - each backend fails in its own way where it is missing
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise SaliencyError(f"--device {device}: torch cannot use it here ({reason}); use --device cpu") from None


# --- input images ------------------------------------------------------------------------------

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
                what = "folder" if arg.endswith(("/", os.sep)) else "image file"
                raise ImageError(f"{what} '{path}' does not exist; check the path")
            elif path.is_file():
                found[path] = None
    if not found:
        raise ImageError("no image files found; pass files, folders or patterns such as 'photos/*.jpg'")
    return list(found)


def _looks_like_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and ".mask." not in path.name


# --- output ------------------------------------------------------------------------------------

class OutputNames:
    """Unique file names: a second ``x.png`` becomes ``x-2.png``."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def take(self, name: str) -> str:
        """``name``, or the first of ``stem-2.suffix``, ``stem-3.suffix`` ... not taken yet; now taken."""
        stem, suffix = os.path.splitext(name)
        candidate, n = name, 1
        while candidate in self.used:
            n += 1
            candidate = f"{stem}-{n}{suffix}"
        self.used.add(candidate)
        return candidate


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn a failed write into a one-line error that names the file and the fix."""
    try:
        yield
    except OSError as exc:
        if isinstance(exc, BrokenPipeError):
            raise
        where = exc.filename or path
        raise SaliencyError(f"cannot write '{where}': {exc.strerror or exc}; choose another --out") from exc


def check_output(path: str | os.PathLike, folder: bool, flag: str = "--out") -> None:
    """Before long work: fail now, in one line, if ``path`` (a folder, or a file, given as ``flag``) could not be
    written."""
    path = Path(path)
    if not folder and path.is_dir():
        raise SaliencyError(f"cannot write '{path}': it is a folder; choose another {flag}")
    existing = path if folder else path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise SaliencyError(f"cannot write '{existing}': it is a file, not a folder; choose another {flag}")
    if existing.exists() and not os.access(existing, os.W_OK | os.X_OK):
        raise SaliencyError(f"cannot write in '{existing}': permission denied; choose another {flag}")


# --- messages ----------------------------------------------------------------------------------

def predictions(probabilities: torch.Tensor, labels: Sequence[str]) -> str:
    """The most probable classes of one image, e.g. ``star 97.1%, square 2.0%, circle 0.5%``."""
    k = min(TOP_PREDICTIONS, len(labels))
    values, indices = probabilities.topk(k)
    return ", ".join(f"{labels[int(i)]} {float(v):.1%}" for v, i in zip(values, indices))


PHOTO_SIDE = 256
"""A picture wider or taller than this, or not square, is taken for a photo rather than a drawn shape."""


def looks_like_photo(picture: Any) -> bool:
    """Whether a PIL image is more likely a photo than a drawn shape: not square, or over :data:`PHOTO_SIDE`."""
    return max(picture.size) > PHOTO_SIDE or picture.width != picture.height


def demo_hint(model: str, photos: bool) -> str | None:
    """A note for photos explained with the bundled demo model, which knows only its eight shapes; else None."""
    from saliency.models import BUNDLED

    if model != "demo" or not photos:
        return None
    shapes = ", ".join(BUNDLED["demo"].labels)
    return (f"the demo model knows only {len(BUNDLED['demo'].labels)} drawn shapes ({shapes}), so its classes "
            "mean little for a photo; for photos use an ImageNet model, e.g. --model resnet50 (its weights "
            "download once; see 'saliency models')")


class SamplingBars:
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


def fail(message: str) -> int:
    """Print ``saliency: error: message`` on stderr; returns the exit status 1."""
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 1
