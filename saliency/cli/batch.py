"""``saliency batch``: explain a whole dataset into a Parquet dataset, locally or on a Ray cluster; rerun to resume."""

from __future__ import annotations

import argparse
import sys

from saliency.cli.options import (add_class_options, add_engine_options, add_method_options, add_model_options,
                                  check_device, check_engine_options, check_output, chosen_methods, command, fail,
                                  positive_int)

SHOWN_FAILURES = 5


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``batch`` on the ``saliency`` command's subparsers."""
    from saliency.batch import DEFAULT_SHARD_SIZE, REDUCTIONS

    p = command(commands, "batch", run,
                "explain every image of a dataset into a Parquet dataset (one row per image and class); "
                "rerun the same command to resume",
                "saliency batch photos/ --out maps.parquet",
                "saliency batch 'val/**/*.JPEG' --model resnet50 --method guided,vanilla --topk 3 --out val-maps",
                "saliency batch files.txt table.parquet s3://bucket/images/ --out s3://bucket/maps --reduce max-abs",
                "saliency batch photos/ --out maps --png pictures/",
                "saliency batch photos/ --out maps --engine ray --workers 4 --gpus-per-worker 1",
                "saliency batch photos/ --out maps --engine ray --address auto   # join a running cluster")
    p.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="image files, folders (recursive), globs, a .txt/.csv list of paths, a Parquet file or "
                        "folder with a 'path' or image-bytes column, or URIs pyarrow opens (s3://, gs://, ...)")
    p.add_argument("--out", required=True, metavar="DEST",
                   help="the Parquet dataset to write (a folder or URI); sources already in it are skipped")
    add_model_options(p)
    add_method_options(p, "--method")
    add_class_options(p, topk_default=1)
    p.add_argument("--reduce", choices=REDUCTIONS, default="none",
                   help="none: raw signed maps, float32 [C,H,W]; max-abs: max over channels of |map|, "
                        "float16 [H,W] (a sixth of the size) (default: none)")
    p.add_argument("--png", metavar="DIR", help="also write each map as a heatmap PNG into DIR")
    p.add_argument("--batch-size", type=positive_int, default=16, metavar="N",
                   help="images per forward pass (default: 16)")
    p.add_argument("--shard-size", type=positive_int, default=DEFAULT_SHARD_SIZE, metavar="N",
                   help=f"images per Parquet file, the unit redone after a crash (default: {DEFAULT_SHARD_SIZE})")
    add_engine_options(p, "this process, threads decoding ahead of the model (processes with "
                       "$SALIENCY_DECODE_IN=processes)", "model actors", gpus=True)
    return p


def run(args: argparse.Namespace) -> int:
    """``saliency batch``: prints a summary; returns 1 if any source failed."""
    from saliency.batch import explain_dataset

    check_engine_options(args)
    if args.png:
        check_output(args.png, folder=True, flag="--png")
    if args.device is not None:
        check_device(args.device)
    methods, options = chosen_methods(args.method, args.option)
    bar = _Bar(enabled=args.engine == "local")
    try:
        summary = explain_dataset(
            args.sources, args.out, model=args.model, weights=args.weights, labels=args.labels,
            input_size=args.input_size, resize=args.resize, mean=args.mean, std=args.std,
            device=str(args.device) if args.device else None, methods=methods, options=options,
            targets=args.target or (), topk=args.topk, reduce=args.reduce, png=args.png,
            batch_size=args.batch_size, shard_size=args.shard_size, engine=args.engine, workers=args.workers,
            gpus_per_worker=args.gpus_per_worker, address=args.address, progress=bar)
    finally:
        bar.close()
    earlier = f" ({len(summary.failed_before)} of them failed)" if summary.failed_before else ""
    print(f"{summary.explained} image{'s' * (summary.explained != 1)} explained, {len(summary.failed)} failed, "
          f"{summary.skipped} already in {args.out}{earlier}")
    for source in summary.failed[:SHOWN_FAILURES]:
        print(f"  failed: {_shown(source)}", file=sys.stderr)
    if len(summary.failed) > SHOWN_FAILURES:
        print(f"  ... and {len(summary.failed) - SHOWN_FAILURES} more (rows with 'error' set)", file=sys.stderr)
    if summary.missing:
        return fail(f"{len(summary.missing)} sources have no rows in {args.out} (a worker was lost); "
                    "rerun the same command to finish them")
    if summary.failed:
        return fail(f"{len(summary.failed)} of {summary.explained + len(summary.failed)} sources could not be "
                    f"explained; their rows in {args.out} hold the reason (column 'error')")
    if summary.failed_before:
        return fail(f"{len(summary.failed_before)} sources failed in an earlier run; their rows in {args.out} hold "
                    "the reason (column 'error'), and a rerun does not retry them (docs/batch.md)")
    return 0


def _shown(source: str) -> str:
    """``source`` fit for one line of a terminal: control characters (a newline in a file name) escaped."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in source)


class _Bar:
    """A tqdm bar in images/s on a terminal (Ray shows its own progress)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled, self.bar = enabled, None

    def __call__(self, done: int, failed: int, total: int) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="image", file=sys.stderr, leave=False, disable=None, smoothing=0.1)
        self.bar.update(done - self.bar.n)
        if failed:
            self.bar.set_postfix(failed=failed)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

