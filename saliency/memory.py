"""Keep freed CPU memory for the next batch instead of faulting in fresh pages for every one.

On the CPU torch takes each activation and gradient from ``malloc``. By default glibc serves
blocks above its mmap threshold (128 kB at first, rising to the largest block freed, at most 32 MB)
with fresh pages from the kernel and gives them back on ``free``, and it trims the heap whenever
twice that threshold lies free at its top; threads other than the main one allocate from arenas
of their own, which it unmaps as soon as they are empty. A model's batch then faults its memory in
again, page by page, each page zeroed by the kernel: ResNet50 at batch 16 touches gigabytes of
fresh pages per call, a fifth to a quarter of its time on a 2-core machine (bench/README.md).
With blocks up to 32 MB taken from the heap, 1 GB of free heap kept before trimming, and one arena
for every thread (the service's model thread is not the main one; Ray's actors get the same settings as
variables from their start, see :func:`malloc_environment`), the
next batch reuses the last one's pages. A process holds on to what its largest batch needed; it
does not grow beyond. Small blocks stay in each thread's own cache, so threads rarely wait on
that arena.
"""

from __future__ import annotations

import ctypes
import os
import sys

MMAP_THRESHOLD = 32 * 1024 * 1024
"""Blocks up to this size come from the heap: as far as glibc's own threshold would rise, and what every glibc accepts."""
TRIM_THRESHOLD = 1024 * 1024 * 1024
"""Free heap kept for reuse before glibc hands it back to the kernel."""

ARENAS = 1
"""One arena for all threads: memory a thread frees stays in the heap for the next batch, whichever thread runs it."""

_SETTINGS = ((-3, "MALLOC_MMAP_THRESHOLD_", MMAP_THRESHOLD),  # (mallopt's option in glibc's malloc.h,
             (-1, "MALLOC_TRIM_THRESHOLD_", TRIM_THRESHOLD),  # the variable glibc reads at start-up, value)
             (-8, "MALLOC_ARENA_MAX", ARENAS))
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_ARENA_MAX")
_applied: bool | None = None


def reuse_freed_memory() -> bool:
    """Have glibc's ``malloc`` keep freed memory for reuse (see the module's text); once per process.

    Returns whether the setting is in force: only with glibc, and not where the user tunes
    ``malloc`` already (``MALLOC_*_`` or ``GLIBC_TUNABLES`` variables, or another allocator
    preloaded: jemalloc and tcmalloc keep freed memory themselves).
    """
    global _applied
    if _applied is None:
        _applied = _apply()
    return _applied


def _apply() -> bool:
    if not sys.platform.startswith("linux") or _user_tuned():
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process runs on (find_library would run ldconfig)
    except (OSError, AttributeError):  # musl and others: no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(option, value) for option, _, value in _SETTINGS)


def malloc_environment() -> dict[str, str]:
    """The same settings as the variables glibc reads when a process starts, for processes started for us.

    ``mallopt`` cannot reach threads that allocated before it ran: each keeps an arena of its own.
    A Ray worker starts its threads before an actor's code runs, and Ray Data calls the actor from
    one of them; there only these variables, in the actor's environment, make the pages of one batch
    serve the next (1.2 × faster for ResNet50, bench/README.md). Empty where the user tunes
    ``malloc`` already, and off Linux.
    """
    if not sys.platform.startswith("linux") or _user_tuned():
        return {}
    return {name: str(value) for _, name, value in _SETTINGS}


def _user_tuned() -> bool:
    if any(os.environ.get(name) for name in _USER_SETTINGS) or "malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return True
    preloaded = os.environ.get("LD_PRELOAD", "")
    return "jemalloc" in preloaded or "tcmalloc" in preloaded
