"""The ``saliency`` command: explain images or whole datasets, compare methods, evaluate them, list models, serve, train the demo."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from collections.abc import Sequence

from saliency import __version__
from saliency.cli.options import PROG, examples, fail, restore_threads
from saliency.errors import SaliencyError
from saliency.memory import reuse_freed_memory

COMMANDS: tuple[str, ...] = ("explain", "compare", "batch", "features", "eval", "list_models", "serve", "train_demo")
"""The command modules of this package, in the order ``saliency --help`` lists them; each has
``add_parser(commands)``, which registers its subcommand. A further command is its module's name here.
A command module imports nothing heavy (torch, torchvision, Captum) at module level or in
``add_parser``: its ``run`` does, so ``--help`` stays fast (the tests check every module named here)."""

__all__ = ["COMMANDS", "PROG", "build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    args = build_parser().parse_args(argv)
    reuse_freed_memory()
    try:
        with warnings.catch_warnings():
            from saliency.errors import UnsupportedActivationWarning

            warnings.simplefilter("ignore", UnsupportedActivationWarning)  # reported from Explanation.warnings
            return args.run(args) or 0
    except SaliencyError as exc:
        return fail(str(exc))
    except BrokenPipeError:  # e.g. piped into head: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as exc:
        where = f" '{exc.filename}'" if exc.filename else ""
        return fail(f"{exc.strerror or exc}{where}")
    except KeyboardInterrupt:
        _close_progress_bars()
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    finally:
        restore_threads()


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the whole command, subcommands included."""
    from saliency.methods import METHODS

    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Saliency maps for PyTorch image classifiers: "
                    f"{', '.join(METHODS)} (default model: the bundled demo, works offline).",
        epilog=examples("saliency explain examples/star.png",
                        "saliency compare examples/star.png --out compare.png",
                        "saliency batch photos/ --out maps.parquet",
                        "saliency features photos/ --layer features.7 --out atlas/",
                        "saliency eval --n-images 8",
                        "saliency models",
                        "saliency serve --port 8000",
                        "saliency COMMAND --help"))
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").add_parser(commands)
    return parser


def _close_progress_bars() -> None:
    """Close the progress bars still shown, so that a message starts on a line of its own."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):
        bar.close()
