"""A per-worker memory budget for the pictures requests decode and draw at the same time.

A request's pictures cost far more memory than its upload: a 6000 × 6000 one-bit PNG is a few
kilobytes on the wire and about a gigabyte once decoded to RGB and drawn back at its own size.
Before any image is decoded, :func:`reserve` estimates what the request will hold (from the image
headers, the methods, classes and style asked for) and takes that much from its worker's budget
until the request ends. A request that needs more than the whole budget is refused with a 413;
one that must wait for others waits up to ``memory_wait`` seconds, then gets a 503 with
``Retry-After``. After a large request the freed memory is handed back to the system.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import threading
import time
from typing import TYPE_CHECKING

from flask import Flask, Response, current_app, g, has_request_context

from saliency.api.config import Settings
from saliency.api.errors import error_response
from saliency.errors import ImageError, SaliencyError
from saliency.images import peek

if TYPE_CHECKING:  # pragma: no cover
    from saliency.api.parsing import ExplainRequest

EXTENSION = "saliency.budget"
MB = 1024 * 1024

#: Bytes one decoded pixel holds in Pillow, by mode (multi-band modes are stored in 32 bits), before
#: it is converted to RGB (an RGB picture is kept as decoded).
DECODED_BYTES = {"RGB": 0, "1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}
#: Bytes per pixel of the upright RGB picture each image keeps, and of each drawn map.
PICTURE_BYTES = 4
#: Bytes per pixel of the arrays drawing one map passes through (the largest counts), by style;
#: measured peaks are 13-20 (heatmap, rgb) and 20-24 (overlay) bytes per pixel beyond the pictures.
DRAWING_BYTES = {"overlay": 28}
DEFAULT_DRAWING_BYTES = 16
#: Freed blocks larger than this are handed back to the system after the request.
TRIM_ABOVE = 32 * MB


class OverMemoryBudget(SaliencyError):
    """A request whose pictures alone need more memory than a worker's budget (413)."""


class MemoryBusy(SaliencyError):
    """A request that did not find room in the budget in time, while others held it (503)."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class MemoryBudget:
    """``capacity`` bytes shared by the request threads of one worker; ``wait``: seconds to wait for room."""

    def __init__(self, capacity: int, wait: float) -> None:
        self.capacity, self.wait = capacity, wait
        self.in_use = 0
        self._room = threading.Condition()

    def acquire(self, nbytes: int) -> None:
        """Take ``nbytes``, waiting up to ``wait`` seconds for others to give theirs back."""
        if nbytes > self.capacity:
            raise OverMemoryBudget(
                f"this request's pictures need about {nbytes / MB:,.0f} MB to decode and draw; this server "
                f"holds at most {self.capacity / MB:,.0f} MB of pictures at once: send smaller images, "
                "or fewer images, classes or methods")
        deadline = time.monotonic() + self.wait
        with self._room:
            while self.in_use + nbytes > self.capacity:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise MemoryBusy(
                        f"the server is busy with other large pictures ({self.in_use / MB:,.0f} of "
                        f"{self.capacity / MB:,.0f} MB in use, this request needs {nbytes / MB:,.0f} MB); "
                        "retry shortly", retry_after=max(1, math.ceil(self.wait)))
                self._room.wait(left)
            self.in_use += nbytes

    def release(self, nbytes: int) -> None:
        with self._room:
            self.in_use -= nbytes
            self._room.notify_all()


def estimate(req: "ExplainRequest", max_pixels: int) -> int:
    """Bytes ``req``'s pictures hold at their peak: decoded originals, drawn maps and one drawing's arrays.

    Sized from each image's header; an image that is not one, or over ``max_pixels``, counts 0
    (decoding refuses it before anything large is held). Maps are counted at the whole image's
    size, which bounds the crop the model saw.
    """
    pixels, decoded = [], 0
    for data in req.images:
        try:
            (width, height), mode = peek(data)
        except ImageError:
            continue
        if width * height > max_pixels:
            continue
        pixels.append(width * height)
        decoded += width * height * (DECODED_BYTES.get(mode, 4) + PICTURE_BYTES)
    if not pixels:
        return 0
    maps = len(req.methods) * (1 if req.target is not None else req.topk)
    drawing = DRAWING_BYTES.get(req.style, DEFAULT_DRAWING_BYTES)
    return decoded + maps * PICTURE_BYTES * sum(pixels) + drawing * max(pixels)


def reserve(req: "ExplainRequest") -> None:
    """Hold ``req``'s estimated memory in the current app's budget until the request ends (no app: nothing)."""
    if not has_request_context() or EXTENSION not in current_app.extensions:
        return
    budget, settings = current_app.extensions[EXTENSION]
    nbytes = estimate(req, settings.max_pixels)
    if nbytes:
        budget.acquire(nbytes)
        g.setdefault("memory_reserved", []).append(nbytes)


def install(app: Flask, settings: Settings) -> MemoryBudget:
    """Give ``app`` a budget of ``settings.memory_budget_mb``, its release at the end of each request, and its errors."""
    budget = MemoryBudget(int(settings.memory_budget_mb * MB), settings.memory_wait)
    app.extensions[EXTENSION] = (budget, settings)

    @app.teardown_request
    def _release(exc: BaseException | None) -> None:
        held = g.pop("memory_reserved", [])
        for nbytes in held:
            budget.release(nbytes)
        if sum(held) > TRIM_ABOVE:
            give_back_memory()

    @app.errorhandler(OverMemoryBudget)
    def _over(exc: OverMemoryBudget) -> Response:
        return error_response("over_memory_budget", str(exc), 413)

    @app.errorhandler(MemoryBusy)
    def _busy(exc: MemoryBusy) -> Response:
        response = error_response("busy", str(exc), 503)
        response.headers["Retry-After"] = str(exc.retry_after)
        return response

    return budget


def give_back_memory() -> None:
    """Return freed heap memory to the system (glibc's ``malloc_trim``; elsewhere nothing)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


_TRIM: list = []


def _malloc_trim():
    if not _TRIM:
        name = ctypes.util.find_library("c")
        library = ctypes.CDLL(name) if name else None
        _TRIM.append(getattr(library, "malloc_trim", None))
    return _TRIM[0]
