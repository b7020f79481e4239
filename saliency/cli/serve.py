"""``saliency serve``: run the HTTP service (JSON API and web page)."""

from __future__ import annotations

import argparse

from saliency.cli.options import (THREADS_VARIABLE, add_model_options, add_threads_option, check_device, command,
                                  device_arg, number_between, positive_int)
from saliency.errors import SaliencyError


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``serve`` on the ``saliency`` command's subparsers."""
    p = command(commands, "serve", run, "run the HTTP service (JSON API and web page)",
                "saliency serve", "saliency serve --host 0.0.0.0 --port 8080 --workers 2 --threads 4",
                "saliency serve --dev --model resnet50",
                "saliency serve --model my_pkg.nets:build --weights net.pt --labels labels.txt --input-size 128")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=number_between(int, 1, 65535), default=8000, help="port (default: 8000)")
    p.add_argument("--workers", type=positive_int, metavar="N", help="worker processes (default: from settings)")
    p.add_argument("--threads", type=positive_int, metavar="N",
                   help="request threads per worker (default: from settings)")
    add_threads_option(p, "--torch-threads", default=f"${THREADS_VARIABLE}, else torch's own, one per core")
    p.add_argument("--device", type=device_arg, metavar="DEVICE",
                   help="torch device for the model: cpu, cuda, cuda:1, mps (default: $SALIENCY_DEVICE, else cpu)")
    p.add_argument("--dev", action="store_true", help="Flask's development server instead of gunicorn")
    add_model_options(p, default=None)
    return p


def run(args: argparse.Namespace) -> int:
    """``saliency serve``: hands over to the service until interrupted."""
    try:
        from saliency.api import serve
    except ImportError as exc:
        raise SaliencyError(f"the HTTP service is not available in this installation ({exc}); "
                            "reinstall with pip install -e .") from exc
    if args.device is not None:
        check_device(args.device)
    settings = {"torch_threads": args.torch_threads, "device": args.device and str(args.device)}
    print(f"web page: {page_url(args.host, args.port)}  (stop with Ctrl-C)", flush=True)
    serve(host=args.host, port=args.port, workers=args.workers, threads=args.threads, dev=args.dev,
          model=args.model, weights=args.weights, labels=args.labels, input_size=args.input_size, resize=args.resize,
          mean=args.mean, std=args.std, **{k: v for k, v in settings.items() if v is not None})
    return 0


def page_url(host: str, port: int) -> str:
    """The address to open in a browser on this machine: ``localhost`` for a server on every address."""
    if host in ("", "0.0.0.0", "::"):
        host = "localhost"
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"
