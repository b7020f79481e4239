"""``saliency eval``: run the sanity checks from the command line, print tables, write plots and JSON."""

from __future__ import annotations

import argparse
import os
import sys

from saliency.cli.options import (add_threads_option, check_output, examples, positive_int, seed_int, set_threads,
                                  split_names)

DEFAULT_OUT = "saliency-eval"
EXAMPLES = (
    "saliency eval",
    "saliency eval --checks randomisation,faithfulness --methods vanilla,guided --n-images 4",
    "saliency eval --model resnet18 --weights random --methods vanilla,deconvnet,guided,gradcam --n-images 4",
)


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``eval`` on the ``saliency`` command's subparsers."""
    from saliency.evaluation.checks import CHECKS, DEFAULT_IMAGES
    from saliency.methods import METHODS

    summary = "sanity checks of the methods: randomisation, class sensitivity, localisation, faithfulness"
    p = commands.add_parser(
        "eval", help=summary, formatter_class=argparse.RawDescriptionHelpFormatter,
        description=summary[0].upper() + summary[1:] + ". Prints a table per check and writes plots, "
                    "tables.md and results.json.",
        epilog=examples(*EXAMPLES))
    p.set_defaults(run=run)
    p.add_argument("--model", default="demo", metavar="NAME",
                   help="demo, a torchvision name (resnet18) or pkg.module:factory (default: demo)")
    p.add_argument("--weights", metavar="FILE",
                   help="a state-dict file, or 'random' for the architecture's random initialisation")
    p.add_argument("--device", default="cpu", metavar="DEVICE",
                   help="torch device to run on: cpu, cuda, cuda:1, mps (default: cpu)")
    p.add_argument("--methods", default="all", metavar="NAMES",
                   help=f"{', '.join(METHODS)} or all, separated by commas (default: all)")
    p.add_argument("--checks", default="all", metavar="NAMES",
                   help=f"{', '.join(CHECKS)} or all, separated by commas (default: all)")
    p.add_argument("--n-images", type=positive_int, default=DEFAULT_IMAGES, metavar="N",
                   help=f"shapes images to evaluate on (default: {DEFAULT_IMAGES}, one per class)")
    p.add_argument("--seed", type=seed_int, default=0,
                   help="picks the images, the random maps and orders, the re-initialised weights, and the "
                        "network of --weights random (default: 0)")
    p.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                   help=f"folder for results.json, tables.md and the plots (default: {DEFAULT_OUT})")
    add_threads_option(p)
    return p


def run(args: argparse.Namespace) -> int:
    """Check the names first (fast errors), then load the model, run the checks, print and write."""
    from saliency.evaluation.checks import resolve_checks
    from saliency.evaluation.report import text_report, write_all
    from saliency.evaluation.runner import evaluate
    from saliency.methods import resolve_methods
    from saliency.models import load_model

    methods = [m.name for m in resolve_methods(split_names(args.methods))]
    checks = resolve_checks(split_names(args.checks))
    check_output(args.out, folder=True)
    device = _device(args.device)
    set_threads(args)
    loaded = load_model(args.model, weights=args.weights, device=device, seed=args.seed)  # --weights random
    print(f"model {loaded.name} ({loaded.weights}); {args.n_images} shapes images, seed {args.seed}", flush=True)
    evaluation = evaluate(loaded, methods, checks, n_images=args.n_images, seed=args.seed,
                          progress=sys.stderr.isatty())
    print(text_report(evaluation))
    written = write_all(evaluation, args.out)
    print(f"\nwrote {len(written)} files to {os.path.join(args.out, '')} ({', '.join(p.name for p in written)})")
    return 0


def _device(text: str):
    import torch

    from saliency.errors import SaliencyError

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise SaliencyError(f"--device {text!r} is not a torch device; use cpu, cuda, cuda:1 or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SaliencyError(f"--device {text}: torch sees no CUDA GPU here; use --device cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise SaliencyError(f"--device {text}: only {torch.cuda.device_count()} CUDA GPU(s) are visible")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise SaliencyError(f"--device {text}: Apple's MPS backend is not available here; use --device cpu")
    return device
