"""``saliency models``: every model that can be named, and whether its weights are here."""

from __future__ import annotations

import argparse

from saliency.cli.options import command


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``models`` on the ``saliency`` command's subparsers."""
    return command(commands, "models", run, "list the models that can be explained", "saliency models")


def run(args: argparse.Namespace) -> int:
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
