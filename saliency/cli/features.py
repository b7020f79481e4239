"""``saliency features``: the feature atlas of a layer — each channel's strongest activations over a set of images."""

from __future__ import annotations

import argparse
import sys

from saliency.cli.options import (add_engine_options, add_model_options, add_threads_option, check_engine_options,
                                  check_output, command, fail, load_model, positive_int, set_threads, writing)


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``features`` on the ``saliency`` command's subparsers."""
    p = command(commands, "features", run,
                "draw the feature atlas of a layer: each channel's strongest activations over the images, "
                "projected to pixels beside the image patches (one PNG per layer, atlas.json)",
                "saliency features shapes/ --layer features.7 --out atlas/",
                "saliency features photos/ --model resnet50 --layer layer3 --layer layer4 --top-channels 8 --out atlas/",
                "saliency features val.txt --model vgg16 --layer features.28 --channels 0-15 --method guided --out atlas/",
                "saliency features s3://bucket/images/ --layer features.7 --engine ray --workers 4 --out atlas/")
    p.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="the images to scan, as 'saliency batch' reads them: files, folders (recursive), globs, "
                        ".txt/.csv lists, Parquet files, URIs")
    p.add_argument("--layer", action="append", required=True, metavar="NAME",
                   help="a layer to draw, by dotted module name (see model.named_modules()); repeat for several")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--channels", metavar="LIST", help="the channels to draw, e.g. 0-15 or 3,7,12")
    which.add_argument("--top-channels", type=positive_int, metavar="N",
                       help="draw the N channels with the strongest activations (default: 16)")
    p.add_argument("--top", type=positive_int, default=9, metavar="K",
                   help="activations shown per channel, each from another image (default: 9)")
    p.add_argument("--method", default="deconvnet", metavar="NAME",
                   help="how each single activation is projected to pixels: a method of 'saliency explain' "
                        "(default: deconvnet)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for LAYER.png and atlas.json")
    p.add_argument("--batch-size", type=positive_int, default=16, metavar="N",
                   help="images per forward pass of the scan (default: 16)")
    add_model_options(p)
    add_threads_option(p)
    add_engine_options(p, "this process", "model actors for the scan")
    return p


def run(args: argparse.Namespace) -> int:
    """``saliency features``: prints what it wrote; returns 1 if some images could not be read."""
    from saliency.atlas import feature_atlas, parse_channels

    check_engine_options(args)
    channels = parse_channels(args.channels) if args.channels else None
    check_output(args.out, folder=True)
    set_threads(args)
    loaded = load_model(args)
    bar = _Bar()
    try:
        atlas = feature_atlas(loaded, args.sources, args.layer, channels=channels, top_channels=args.top_channels,
                              top=args.top, method=args.method, engine=args.engine, batch_size=args.batch_size,
                              workers=args.workers, address=args.address, progress=bar)
    finally:
        bar.close()
    with writing(args.out):
        written = atlas.write(args.out)
    scanned = len(atlas.sources) - len(atlas.failed)
    print(f"scanned {scanned} image{'s' * (scanned != 1)} with model {loaded.name}; projected with {atlas.method}")
    for path in written:
        print(f"  -> {path}")
    if atlas.failed:
        for source in atlas.failed[:5]:
            print(f"  could not read: {source}", file=sys.stderr)
        return fail(f"{len(atlas.failed)} of {len(atlas.sources)} images could not be read; the atlas leaves them out")
    return 0


class _Bar:
    """A tqdm bar over the scanned images, on a terminal only."""

    def __init__(self) -> None:
        self.bar = None

    def __call__(self, done: int, failed: int) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(unit="image", file=sys.stderr, leave=False, disable=None, desc="scan")
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
