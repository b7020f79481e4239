"""saliency.memory: freed tensors' pages are reused by the next batch instead of faulted in again."""

import json
import os
import subprocess
import sys

import pytest

from saliency.memory import malloc_environment

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings")

PROBE = """
import json, resource, sys, threading
import torch
from saliency.memory import reuse_freed_memory
go = threading.Event()
def early():  # a thread that allocated before the setting, as a Ray worker's threads have
    torch.ones(1024)
    go.wait()
    batches()
if sys.argv[2] == "early":
    worker = threading.Thread(target=early)
    worker.start()
applied = reuse_freed_memory() if sys.argv[1] == "tuned" else False
def batch():  # what a model's pass does: many large blocks, allocated, written, freed
    blocks = [torch.ones(1024 * 1024) for _ in range(64)]  # 4 MB each, 256 MB in all
    del blocks
def batches():
    for _ in range(5):
        batch()
batch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
if sys.argv[2] == "thread":  # as the service's model thread runs
    worker = threading.Thread(target=batches)
    worker.start()
    worker.join()
elif sys.argv[2] == "early":
    go.set()
    worker.join()
else:
    batches()
print(json.dumps({"applied": applied, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


PAGES = 5 * 256 * 1024 * 1024 // 4096
"""The probe's five batches of 256 MB, in 4 kB pages."""


def _probe(mode: str, where: str = "main", **env: str) -> dict:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | env
    done = subprocess.run([sys.executable, "-c", PROBE, mode, where], capture_output=True,
                          text=True, env=environment, timeout=120, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("where", ["main", "thread"])
def test_freed_blocks_are_reused_instead_of_faulted_in_again(where):
    plain, tuned = _probe("plain", where), _probe("tuned", where)
    assert tuned["applied"]
    assert tuned["faults"] < PAGES / 10  # the pages of the first batch serve the next ones
    assert plain["faults"] > 3 * tuned["faults"]  # glibc's defaults: a quarter to all of them faulted in again


def test_a_thread_that_allocated_before_the_setting_needs_it_in_the_environment():
    """Ray calls its actors from threads it started first: ``mallopt`` comes too late for them, the variables do not."""
    too_late, started_with = _probe("tuned", "early"), _probe("plain", "early", **malloc_environment())
    assert started_with["faults"] < PAGES / 10
    assert too_late["faults"] > 2 * started_with["faults"]  # its own arena, handed back to the kernel as it empties
    assert not _probe("tuned", "early", **malloc_environment())["applied"]  # nothing left to set: no second call


def test_a_user_who_tunes_malloc_keeps_their_settings(monkeypatch):
    assert not _probe("tuned", MALLOC_TRIM_THRESHOLD_="65536")["applied"]
    assert not _probe("tuned", GLIBC_TUNABLES="glibc.malloc.trim_threshold=65536")["applied"]
    assert set(malloc_environment()) == {"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_ARENA_MAX"}
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert malloc_environment() == {}  # nor passed on to Ray's actors
