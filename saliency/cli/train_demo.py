"""``saliency train-demo``: retrain the bundled demo model on generated shapes."""

from __future__ import annotations

import argparse

from saliency.cli.options import check_output, command, fail, positive_int, seed_int


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``train-demo`` on the ``saliency`` command's subparsers."""
    p = command(commands, "train-demo", run,
                "retrain the bundled demo model on generated shapes (CPU; the defaults take several minutes)",
                "saliency train-demo",
                "saliency train-demo --steps 300 --out my-demo.pt && "
                "saliency explain examples/star.png --weights my-demo.pt")
    p.add_argument("--out", metavar="FILE",
                   help="where to save the weights (default: a new demo-weights.pt in the current folder; the "
                        "bundled weights are replaced only if you name their file)")
    p.add_argument("--steps", type=positive_int, default=1500, metavar="N", help="optimiser steps (default: 1500)")
    p.add_argument("--train-images", type=positive_int, default=20_000, metavar="N",
                   help="generated training images (default: 20000)")
    p.add_argument("--test-images", type=positive_int, default=2000, metavar="N",
                   help="fresh images to measure accuracy on (default: 2000)")
    p.add_argument("--seed", type=seed_int, default=0, help="random seed (default: 0)")
    p.add_argument("--threads", type=positive_int, default=2, metavar="N", help="CPU threads (default: 2)")
    return p


def run(args: argparse.Namespace) -> int:
    """``saliency train-demo``: the models package's trainer; it logs its own progress."""
    from saliency.models.train import new_weights_path, train_demo

    out = args.out or str(new_weights_path())
    check_output(out, folder=False)
    result = train_demo(out, steps=args.steps, train_images=args.train_images,
                        test_images=args.test_images, seed=args.seed, threads=args.threads)
    print(f"use them with: saliency explain IMAGE --weights {out}")
    return 0 if result.final_loss == result.final_loss else fail("training diverged (loss is NaN); "
                                                                  "try another --seed or more --steps")
