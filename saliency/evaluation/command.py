"""``saliency eval``: run the sanity checks from the command line, print tables, write plots and JSON."""

from __future__ import annotations

import argparse
import sys

DEFAULT_OUT = "saliency-eval"


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``eval`` on the ``saliency`` command's subparsers."""
    from saliency import cli
    from saliency.evaluation.runner import CHECKS, DEFAULT_IMAGES

    p = cli._command(commands, "eval", run,
                     "sanity checks of the methods: randomisation, class sensitivity, localisation, faithfulness",
                     "saliency eval",
                     "saliency eval --checks randomisation,faithfulness --methods vanilla,guided --n-images 4",
                     "saliency eval --model resnet18 --weights random --n-images 2 --out eval-resnet18/")
    cli._add_model_options(p)
    p.add_argument("--methods", default="all", metavar="NAMES",
                   help=f"{', '.join(cli._methods())} or all, separated by commas (default: all)")
    p.add_argument("--checks", default="all", metavar="NAMES",
                   help=f"{', '.join(CHECKS)} or all, separated by commas (default: all)")
    p.add_argument("--n-images", type=cli._positive_int, default=DEFAULT_IMAGES, metavar="N",
                   help=f"shapes images to evaluate on (default: {DEFAULT_IMAGES}, one per class)")
    p.add_argument("--seed", type=int, default=0, help="picks the images, random maps and weights (default: 0)")
    p.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                   help=f"folder for results.json, tables.md and the plots (default: {DEFAULT_OUT})")
    return p


def run(args: argparse.Namespace) -> int:
    """Resolve names first (fast errors), then load the model, run the checks, print and write."""
    from saliency import cli
    from saliency.evaluation.report import text_report, write_all
    from saliency.evaluation.runner import evaluate, resolve_checks
    from saliency.methods import resolve_methods

    methods = [m.name for m in resolve_methods(cli._split(args.methods))]
    checks = resolve_checks(cli._split(args.checks))
    loaded = cli._load_model(args)
    print(f"model {loaded.name} ({loaded.weights}); {args.n_images} shapes images, seed {args.seed}", flush=True)
    evaluation = evaluate(loaded, methods, checks, n_images=args.n_images, seed=args.seed,
                          progress=sys.stderr.isatty())
    print(text_report(evaluation))
    written = write_all(evaluation, args.out)
    print(f"\nwrote {len(written)} files to {args.out}/ ({', '.join(p.name for p in written)})")
    return 0
